#!/usr/bin/env bash
# IWSLT'14 De-En with transformer_iwslt_de_en: Adam (0.9, 0.98), lr 5e-4, inverse_sqrt warm-up 4000, dropout 0.3,
# weight decay 1e-4, label smoothing 0.1, 4096 tokens/update, --fp16 (fairseq's examples/translation recipe).
# Hardware: 1 GPU, ~1 h for 50k updates alone on an H100.
# usage: HEADS=collab KEY_DIM=128 SEED=1 recipes/iwslt14_de_en/train.sh
set -euo pipefail
export CORPUS=iwslt14_de_en ARCH_FAMILY=iwslt_de_en
export MAX_UPDATE="${MAX_UPDATE:-50000}" LR="${LR:-5e-4}" WARMUP="${WARMUP:-4000}" DROPOUT="${DROPOUT:-0.3}"
export WEIGHT_DECAY="${WEIGHT_DECAY:-0.0001}" MAX_TOKENS="${MAX_TOKENS:-4096}" TOKENS_PER_UPDATE="${TOKENS_PER_UPDATE:-4096}"
exec "$(dirname "$0")/../lib/train.sh"
