#!/usr/bin/env bash
# Multi30k En-De with transformer_iwslt_de_en sizes (6+6 layers, 512 dims, 4 heads, FFN 1024).
# Hardware: 1 GPU, ~3 min alone on an H100 for 1800 updates (several fit side by side).
# Effective batch: 8192 tokens/update. Recipe: Adam (0.9, 0.98), lr 1e-3, inverse_sqrt warm-up 1000,
# dropout 0.3, label smoothing 0.1, weight decay 1e-4, fp16.
#
# Collaborative heads (HEADS=collab) default to the warm start that keeps the transformer's BLEU at D_k=128
# (results/collab_quality/README.md): fairseq's transformer for the first WARM_START=600 of the 1800 updates,
# collab-reparametrize to D_k, then collaborative training for the rest. WARM_START= (empty) trains from scratch.
#
# usage: HEADS=collab KEY_DIM=128 SEED=1 recipes/multi30k_en_de/train.sh
#        HEADS=transformer recipes/multi30k_en_de/train.sh        (fairseq's transformer, the baseline)
set -euo pipefail
export CORPUS=multi30k_en_de ARCH_FAMILY=iwslt_de_en
export MAX_UPDATE="${MAX_UPDATE:-1800}" LR="${LR:-1e-3}" WARMUP="${WARMUP:-1000}" DROPOUT="${DROPOUT:-0.3}"
export WEIGHT_DECAY="${WEIGHT_DECAY:-0.0001}" MAX_TOKENS="${MAX_TOKENS:-8192}" TOKENS_PER_UPDATE="${TOKENS_PER_UPDATE:-8192}"
[[ "${HEADS:-collab}" == collab ]] && export WARM_START="${WARM_START-600}"
exec "$(dirname "$0")/../lib/train.sh"
