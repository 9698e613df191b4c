#!/usr/bin/env bash
# WMT14 En-De, transformer base as in the paper: Adam (0.9, 0.98), lr 7e-4, inverse_sqrt warm-up 4000,
# label smoothing 0.1, dropout 0.1, --fp16, shared embeddings.
# Hardware: every visible GPU (fairseq distributed training, NCCL); multi-node through torchrun/SLURM variables.
# Effective batch: TOKENS_PER_UPDATE (default 32768 = 8 GPUs x 4096 tokens) whatever the GPU count:
# update-freq = TOKENS_PER_UPDATE / (MAX_TOKENS x GPUs); MAX_TOKENS=auto (default) takes 16384-token steps on GPUs
# of 40 GB and more, 4096 on smaller ones. 100k updates: ~3-3.5 h on one H200 (on paper from Multi30k sentences, results/multi_gpu/README.md).
# Re-running the same command resumes from checkpoint_last.pt; tensorboard logs in $SAVE_DIR/tb.
#
# usage: HEADS=collab KEY_DIM=128 SEED=1 recipes/wmt14_en_de/train.sh
#        HEADS=transformer recipes/wmt14_en_de/train.sh            (fairseq's transformer_wmt_en_de)
#   env: DATA (work/wmt14_en_de/bin), SAVE_DIR, MAX_UPDATE (100000), ATTENTIONS, MIXING_INIT, EXTRA
set -euo pipefail
export CORPUS=wmt14_en_de ARCH_FAMILY=wmt_en_de
export MAX_UPDATE="${MAX_UPDATE:-100000}" LR="${LR:-7e-4}" WARMUP="${WARMUP:-4000}" DROPOUT="${DROPOUT:-0.1}"
export MAX_TOKENS="${MAX_TOKENS:-auto}" TOKENS_PER_UPDATE="${TOKENS_PER_UPDATE:-32768}"
# keep update checkpoints for averaging (evaluate.sh averages the last 5)
export EXTRA="--save-interval-updates ${SAVE_INTERVAL_UPDATES:-1000} --keep-interval-updates 10 ${EXTRA:-}"
exec "$(dirname "$0")/../lib/train.sh"
