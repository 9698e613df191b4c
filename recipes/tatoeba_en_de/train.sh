#!/usr/bin/env bash
# Tatoeba En-De (161,813 training pairs after data-prep/prepare-tatoeba-en-de.sh) with transformer_iwslt_de_en sizes
# (6+6 layers, 512 dims, 4 heads, FFN 1024). Hardware: 1 GPU.
# Effective batch: 8192 tokens/update. Recipe: Adam (0.9, 0.98), lr 1e-3, inverse_sqrt warm-up 4000, dropout 0.3,
# label smoothing 0.1, weight decay 1e-4, fp16; validation every epoch (232 updates at 8,192 tokens).
# The update budget is chosen on validation loss by sweep.sh (the transformer to convergence with PATIENCE, then
# every row at its best update); MAX_UPDATE (40000) is a cap for a run of its own.
# Collaborative heads (HEADS=collab) default to the warm start: fairseq's transformer for the first WARM_START=2000
# updates (inside the warm-up), collab-reparametrize to D_k, then collaborative training; WARM_START= (empty): from
# scratch.
#
# usage: HEADS=collab KEY_DIM=128 SEED=1 MAX_UPDATE=9000 recipes/tatoeba_en_de/train.sh
#        HEADS=transformer PATIENCE=5 recipes/tatoeba_en_de/train.sh     (to convergence)
set -euo pipefail
export CORPUS=tatoeba_en_de ARCH_FAMILY=iwslt_de_en
export MAX_UPDATE="${MAX_UPDATE:-40000}" LR="${LR:-1e-3}" WARMUP="${WARMUP:-4000}" DROPOUT="${DROPOUT:-0.3}"
export WEIGHT_DECAY="${WEIGHT_DECAY:-0.0001}" MAX_TOKENS="${MAX_TOKENS:-8192}" TOKENS_PER_UPDATE="${TOKENS_PER_UPDATE:-8192}"
[[ "${HEADS:-collab}" == collab ]] && export WARM_START="${WARM_START-2000}"
exec "$(dirname "$0")/../lib/train.sh"
