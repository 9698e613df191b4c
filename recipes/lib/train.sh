#!/usr/bin/env bash
# Generic fairseq-train launcher shared by the corpus recipes (they set the defaults, then exec this).
# Environment (all optional, corpus recipes set sensible values):
#   CORPUS         e.g. multi30k_en_de: DATA defaults to work/$CORPUS/bin, SAVE_DIR to work/$CORPUS/runs/<heads>_dk<D_k>_s<seed>
#   DATA           binarized data dir                      SAVE_DIR   checkpoints + logs (resumes from checkpoint_last.pt)
#   ARCH_FAMILY    iwslt_de_en | wmt_en_de | ...           HEADS      transformer | collab | concat
#   KEY_DIM        D_k (collab/concat)                     ATTENTIONS encoder_self,decoder_self,encoder_decoder
#   MIXING_INIT    concatenate | normal | xavier           SEED       random seed
#   MAX_UPDATE, LR, WARMUP, DROPOUT, WEIGHT_DECAY, CLIP_NORM
#   PATIENCE       train to convergence: stop once N validations in a row did not improve the validation loss
#                  (fairseq's --patience; MAX_UPDATE stays the cap)
#   TOKENS_PER_UPDATE  effective batch in tokens, kept whatever the GPU count (tokens x GPUs x update-freq)
#   MAX_TOKENS     tokens per GPU per step                 FP16       1 (default) | 0
#   EXTRA          more fairseq-train flags
#   WARM_START     U (collab only): the paper's re-parametrization route within the same budget: train fairseq's
#                  transformer for U updates, collab-reparametrize it to D_k, then train the collaborative model
#                  for MAX_UPDATE - U updates, continuing the warm-up where it stopped (U < WARMUP)
#   WARM_START_EXTRA  fairseq-train flags of that transformer phase (EXTRA goes to the collaborative phase)
# GPUs: every visible GPU (CUDA_VISIBLE_DEVICES) through fairseq's distributed training (NCCL);
# multi-node via torchrun / SLURM variables, which fairseq reads itself.
set -euo pipefail
: "${ARCH_FAMILY:?set ARCH_FAMILY (iwslt_de_en, wmt_en_de, ...)}"
HEADS="${HEADS:-collab}"
SEED="${SEED:-1}"
[[ "$HEADS" == transformer ]] && KEY_DIM="" || KEY_DIM="${KEY_DIM:-128}"
DATA="${DATA:-work/${CORPUS:?set CORPUS or DATA}/bin}"
SAVE_DIR="${SAVE_DIR:-work/${CORPUS:?set CORPUS or SAVE_DIR}/runs/${HEADS}${KEY_DIM:+_dk$KEY_DIM}_s$SEED}"
FP16="${FP16:-1}"
[[ -n "$(ls "$DATA"/dict.*.txt 2>/dev/null)" ]] || { echo "error: $DATA has no dict.*.txt: run the data-prep script first" >&2; exit 1; }

case "$HEADS" in
  transformer) MODEL=(--arch "transformer_${ARCH_FAMILY}") ;;
  collab|concat)
    MODE=collaborative; [[ "$HEADS" == concat ]] && MODE=concatenate
    MODEL=(--arch "transformer_collab_${ARCH_FAMILY}" --collab-key-dim "$KEY_DIM" --collab-mode "$MODE"
           --collab-attentions "${ATTENTIONS:-encoder_self,decoder_self,encoder_decoder}"
           --collab-mixing-init "${MIXING_INIT:-concatenate}") ;;
  *) echo "error: HEADS must be transformer, collab or concat (got '$HEADS')" >&2; exit 2 ;;
esac

NGPU=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
NNODES="${SLURM_NNODES:-${NNODES:-1}}"
WORLD=$((NGPU * NNODES))
UPDATE_FREQ=$(( (TOKENS_PER_UPDATE + MAX_TOKENS * WORLD - 1) / (MAX_TOKENS * WORLD) ))
# shrink the per-GPU batch so that GPUs x update-freq x MAX_TOKENS is the target, not up to WORLD times more
MAX_TOKENS=$(( (TOKENS_PER_UPDATE + WORLD * UPDATE_FREQ - 1) / (WORLD * UPDATE_FREQ) ))
PREC=(); [[ "$FP16" == 1 ]] && PREC=(--fp16)
STOP=(); [[ -n "${PATIENCE:-}" ]] && STOP=(--patience "$PATIENCE")

mkdir -p "$SAVE_DIR"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -n "${WARM_START:-}" ]]; then
  [[ "$HEADS" == collab ]] || { echo "error: WARM_START needs HEADS=collab (got $HEADS)" >&2; exit 2; }
  (( WARM_START > 0 && WARM_START < WARMUP && WARM_START < MAX_UPDATE )) || {
    echo "error: WARM_START=$WARM_START must be in (0, min(WARMUP=$WARMUP, MAX_UPDATE=$MAX_UPDATE))" >&2; exit 2; }
  INIT="$SAVE_DIR/warm_start_dk$KEY_DIM.pt"
  if [[ ! -s "$SAVE_DIR/checkpoint_last.pt" && ! -s "$INIT" ]]; then
    MAX_UPDATE="$WARM_START" HEADS=transformer KEY_DIM="" WARM_START="" PATIENCE="" SAVE_DIR="$SAVE_DIR/warm_start" \
      EXTRA="${WARM_START_EXTRA:-}" \
      "${BASH_SOURCE[0]}"
    python3 -m collab_fairseq.cli.reparametrize "$SAVE_DIR/warm_start/checkpoint_last.pt" "$INIT" --key-dim "$KEY_DIM" \
      --attentions "${ATTENTIONS:-encoder_self,decoder_self,encoder_decoder}" --report "$SAVE_DIR/warm_start/reparametrize.json" --force
  fi
  # the warm-up goes on from lr(U) = LR * U / WARMUP over the remaining WARMUP - U updates; inverse_sqrt then
  # decays as LR * sqrt((WARMUP - U) / u) with u counted from the restart, a little faster than one
  # uninterrupted run (Multi30k: 0.58 LR at the end instead of 0.75 LR)
  WARMUP_INIT_LR=$(python3 -c "print($LR * $WARM_START / $WARMUP)")
  WARMUP=$((WARMUP - WARM_START)); MAX_UPDATE=$((MAX_UPDATE - WARM_START))
  EXTRA="${EXTRA:-} --finetune-from-model $INIT"
  [[ -s "$SAVE_DIR/checkpoint_last.pt" ]] && EXTRA="${EXTRA% --finetune-from-model *}"
fi
echo "[train] $HEADS D_k=${KEY_DIM:-full} seed=$SEED: $WORLD GPU(s) x $MAX_TOKENS tokens x update-freq $UPDATE_FREQ" \
     "= $((WORLD * MAX_TOKENS * UPDATE_FREQ)) tokens/update (target $TOKENS_PER_UPDATE) -> $SAVE_DIR" >&2
set +e
# shellcheck disable=SC2086
python3 -m fairseq_cli.train "$DATA" --user-dir "$REPO/collab_fairseq" "${MODEL[@]}" \
  --share-all-embeddings --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm "${CLIP_NORM:-0.0}" \
  --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr "${WARMUP_INIT_LR:-1e-07}" \
  --dropout "$DROPOUT" --weight-decay "${WEIGHT_DECAY:-0.0}" \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --max-update "$MAX_UPDATE" "${PREC[@]}" "${STOP[@]}" \
  --seed "$SEED" --save-dir "$SAVE_DIR" --no-epoch-checkpoints --keep-last-epochs 0 \
  --log-format simple --log-interval 100 --no-progress-bar --tensorboard-logdir "$SAVE_DIR/tb" \
  ${EXTRA:-} 2>&1 | tee -a "$SAVE_DIR/train.log"
status=${PIPESTATUS[0]}
set -e
if (( status != 0 )); then
  # a dead worker (killed rank, OOM, NCCL error) ends every rank: fairseq's launcher reports which one above
  resume="from scratch (no checkpoint was saved yet)"
  [[ -s "$SAVE_DIR/checkpoint_last.pt" ]] && resume="from $SAVE_DIR/checkpoint_last.pt"
  echo "error: fairseq-train stopped with exit status $status ($SAVE_DIR/train.log has the traceback);" \
       "re-running the same command resumes $resume" >&2
  exit "$status"
fi
