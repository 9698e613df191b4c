#!/usr/bin/env bash
# Multi30k: convert a trained transformer run into collaborative heads at D_k = 512 ... 64 (CP decomposition),
# score each without retraining, fine-tune D_k=128 and 64 for 300 updates (lr 5e-4, warm-up 100), and score again.
# Hardware: 1 GPU, a few minutes.
#
# usage: SOURCE=work/multi30k_en_de/runs/transformer_dk512_s1 recipes/multi30k_en_de/reparametrize.sh
set -euo pipefail
export RECIPE_DIR="$(cd "$(dirname "$0")" && pwd)"
export SOURCE="${SOURCE:?set SOURCE to a trained transformer run directory}"
export OUT_DIR="${OUT_DIR:-work/multi30k_en_de/reparam/$(basename "$SOURCE")}"
export KEY_DIMS="${KEY_DIMS:-512 384 256 192 128 64}" FINETUNE_DIMS="${FINETUNE_DIMS-128 64}"
export FINETUNE_UPDATES="${FINETUNE_UPDATES:-300}" FINETUNE_LR="${FINETUNE_LR:-5e-4}" FINETUNE_WARMUP="${FINETUNE_WARMUP:-100}"
exec "$RECIPE_DIR/../lib/reparametrize.sh"
