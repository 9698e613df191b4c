#!/usr/bin/env bash
# Generic fairseq-train launcher shared by the corpus recipes (they set the defaults, then exec this).
# Environment (all optional, corpus recipes set sensible values):
#   CORPUS         e.g. multi30k_en_de: DATA defaults to work/$CORPUS/bin, SAVE_DIR to work/$CORPUS/runs/<heads>_dk<D_k>_s<seed>
#   DATA           binarized data dir                      SAVE_DIR   checkpoints + logs (resumes from checkpoint_last.pt)
#   ARCH_FAMILY    iwslt_de_en | wmt_en_de | ...           HEADS      transformer | collab | concat
#   KEY_DIM        D_k (collab/concat)                     ATTENTIONS encoder_self,decoder_self,encoder_decoder
#   MIXING_INIT    concatenate | normal | xavier           SEED       random seed
#   KERNEL         --collab-attention-kernel (unset: the model's default, auto; the kernels:
#                  collab_fairseq/modules/attention_kernels.py)
#   MAX_UPDATE, LR, WARMUP, DROPOUT, WEIGHT_DECAY, CLIP_NORM
#   PATIENCE       train to convergence: stop once N validations in a row did not improve the validation loss
#                  (fairseq's --patience; MAX_UPDATE stays the cap)
#   TOKENS_PER_UPDATE  effective batch in tokens, kept whatever the GPU count (tokens x GPUs x update-freq)
#   MAX_TOKENS     tokens per GPU per step, or auto: 16384 where every visible GPU has >= 38 GiB (A100 40GB and
#                  up), else 4096 (GPU_MEMORY_GIB replaces the query, e.g. to plan another machine with DRY_RUN)
#   FP16           1 (default) | 0
#   NGPU           GPUs per node (default: every visible one)
#   FAST_TRAIN     0 (default): fairseq's translation task; 1: --task translation_fast --train-step auto, whose
#                  training step replays a CUDA graph per batch shape on one GPU (fairseq's step on the CPU and on
#                  several GPUs; the log says which runs). For measuring speed only: on a GPU it trained worse models
#                  than fairseq's step (results/fast_train_quality/README.md; the likely cause fixed, not yet
#                  measured again on a GPU)
#   EXTRA          more fairseq-train flags
#   WARM_START     U (collab only): the paper's re-parametrization route within the same budget: train fairseq's
#                  transformer for U updates, collab-reparametrize it to D_k, then train the collaborative model
#                  for MAX_UPDATE - U updates, continuing the warm-up where it stopped (U < WARMUP;
#                  collab_fairseq/cli/warm_start_schedule.py); with FP16 the second phase starts at the loss
#                  scale the first one reached
#   WARM_START_EXTRA  fairseq-train flags of that transformer phase (EXTRA goes to the collaborative phase)
#   CUDNN_ATTENTION  0 (default): torch's cuDNN attention off for every run, transformer baselines included (it
#                  builds a graph per new batch shape: collab_fairseq/attention_backends.py); 1: on. Recorded in
#                  SAVE_DIR/code.json
#   DRY_RUN=1      print the batch plan and the commands, run nothing
# GPUs: every visible GPU (CUDA_VISIBLE_DEVICES) through fairseq's distributed training (NCCL);
# multi-node via torchrun / SLURM variables, which fairseq reads itself.
set -euo pipefail
: "${ARCH_FAMILY:?set ARCH_FAMILY (iwslt_de_en, wmt_en_de, ...)}"
HEADS="${HEADS:-collab}"
SEED="${SEED:-1}"
[[ "$HEADS" == transformer ]] && KEY_DIM="" || KEY_DIM="${KEY_DIM:-128}"
DATA="${DATA:-work/${CORPUS:?set CORPUS or DATA}/bin}"
SAVE_DIR="${SAVE_DIR:-work/${CORPUS:?set CORPUS or SAVE_DIR}/runs/${HEADS}${KEY_DIM:+_dk$KEY_DIM}_s$SEED}"
ATTENTIONS="${ATTENTIONS:-encoder_self,decoder_self,encoder_decoder}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
export COLLAB_FAIRSEQ_CUDNN_ATTENTION="${CUDNN_ATTENTION:-0}"
[[ "$DRY_RUN" == 1 || -n "$(ls "$DATA"/dict.*.txt 2>/dev/null)" ]] ||
  { echo "error: $DATA has no dict.*.txt: run the data-prep script first" >&2; exit 1; }
[[ "$HEADS" =~ ^(transformer|collab|concat)$ ]] ||
  { echo "error: HEADS must be transformer, collab or concat (got '$HEADS')" >&2; exit 2; }
[[ "${FAST_TRAIN:-0}" =~ ^[01]$ ]] || { echo "error: FAST_TRAIN must be 1 or 0 (got '$FAST_TRAIN')" >&2; exit 2; }
[[ "${FAST_TRAIN:-0}" == 0 ]] || echo "[train] warning: FAST_TRAIN=1 trained worse models than fairseq's step on a GPU" \
  "(results/fast_train_quality/README.md): use it to measure speed, not to train models to keep" >&2

# the effective batch, whatever the world size: GPUs x update-freq x tokens per GPU >= TOKENS_PER_UPDATE
NGPU="${NGPU:-$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")}"
WORLD=$((NGPU * ${SLURM_NNODES:-${NNODES:-1}}))
if [[ "$MAX_TOKENS" == auto ]]; then
  # a GPU-step's time hardly grows with its tokens (the host sets the pace), so GPUs with room take large steps
  # (results/multi_gpu/README.md: the same 32,768-token updates at 16,384 and at 4,096 tokens per step)
  GPU_MEMORY_GIB="${GPU_MEMORY_GIB:-$(python3 -c "import torch; print(min((torch.cuda.get_device_properties(i).total_memory >> 30
    for i in range(torch.cuda.device_count())), default=0))")}"
  [[ "$GPU_MEMORY_GIB" =~ ^[0-9]+$ ]] ||
    { echo "error: GPU_MEMORY_GIB must be a whole number of GiB (got '$GPU_MEMORY_GIB')" >&2; exit 2; }
  (( GPU_MEMORY_GIB >= 38 )) && MAX_TOKENS=16384 || MAX_TOKENS=4096
  (( GPU_MEMORY_GIB > 0 )) && smallest="smallest visible GPU: $GPU_MEMORY_GIB GiB" || smallest="no GPU visible"
  echo "[train] MAX_TOKENS=auto: $MAX_TOKENS tokens per GPU-step ($smallest)" >&2
fi
[[ "$MAX_TOKENS" =~ ^[1-9][0-9]*$ ]] ||
  { echo "error: MAX_TOKENS must be a number of tokens per GPU-step or auto (got '$MAX_TOKENS')" >&2; exit 2; }
UPDATE_FREQ=$(( (TOKENS_PER_UPDATE + MAX_TOKENS * WORLD - 1) / (MAX_TOKENS * WORLD) ))
# shrink the per-GPU batch so that GPUs x update-freq x MAX_TOKENS is the target, not up to WORLD times more
MAX_TOKENS=$(( (TOKENS_PER_UPDATE + WORLD * UPDATE_FREQ - 1) / (WORLD * UPDATE_FREQ) ))
echo "[train] $HEADS D_k=${KEY_DIM:-full} seed=$SEED: $WORLD GPU(s) x $MAX_TOKENS tokens x update-freq $UPDATE_FREQ" \
     "= $((WORLD * MAX_TOKENS * UPDATE_FREQ)) tokens/update (target $TOKENS_PER_UPDATE) -> $SAVE_DIR" >&2

print_command() {  # one line a shell can run again as it is (DRY_RUN)
  local quoted; printf -v quoted '%q ' "$@"; echo "${quoted% }"
}

finished_then_aborted() {  # TRAIN_LOG: "done training", then C++'s abort of a daemon thread at interpreter exit
  local tail_lines; tail_lines=$(tail -n 2 "$1")
  [[ "$tail_lines" == *"| done training in "*$'\n'"terminate called without an active exception" ]]
}

fairseq_train() {  # SAVE_DIR HEADS MAX_UPDATE WARMUP WARMUP_INIT_LR PATIENCE [more fairseq-train flags]
  local dir="$1" heads="$2" updates="$3" warmup="$4" init_lr="$5" patience="$6"; shift 6
  local model=(--arch "transformer_${ARCH_FAMILY}")
  if [[ "$heads" != transformer ]]; then
    local mode=collaborative; [[ "$heads" == concat ]] && mode=concatenate
    model=(--arch "transformer_collab_${ARCH_FAMILY}" --collab-key-dim "$KEY_DIM" --collab-mode "$mode"
           --collab-attentions "$ATTENTIONS" --collab-mixing-init "${MIXING_INIT:-concatenate}"
           ${KERNEL:+--collab-attention-kernel "$KERNEL"})
  fi
  local options=(); [[ "${FP16:-1}" == 1 ]] && options+=(--fp16); [[ -n "$patience" ]] && options+=(--patience "$patience")
  [[ "${FAST_TRAIN:-0}" == 1 ]] && options+=(--task translation_fast --train-step auto)
  local cmd=(python3 -m fairseq_cli.train "$DATA" --user-dir "$REPO/collab_fairseq" "${model[@]}"
    --share-all-embeddings --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm "${CLIP_NORM:-0.0}"
    --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$warmup" --warmup-init-lr "$init_lr"
    --dropout "$DROPOUT" --weight-decay "${WEIGHT_DECAY:-0.0}"
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --max-update "$updates" "${options[@]}"
    --seed "$SEED" --save-dir "$dir" --no-epoch-checkpoints --keep-last-epochs 0
    --log-format simple --log-interval 100 --no-progress-bar --tensorboard-logdir "$dir/tb" "$@")
  if [[ "$DRY_RUN" == 1 ]]; then print_command "${cmd[@]}"; return 0; fi
  mkdir -p "$dir"
  python3 "$REPO/collab_fairseq/provenance.py" >"$dir/code.json"  # which code trains it (evaluate copies it)
  local status=0
  "${cmd[@]}" 2>&1 | tee -a "$dir/train.log" || status=${PIPESTATUS[0]}
  if (( status == 134 )) && finished_then_aborted "$dir/train.log"; then
    echo "[train] warning: fairseq-train finished (\"done training\", checkpoints saved), then aborted while Python" \
         "shut down (status 134): fairseq's batch-prefetch thread was still collating in torch; the run is complete" >&2
    status=0
  fi
  if (( status != 0 )); then
    # a dead worker (killed rank, OOM, NCCL error) ends every rank: fairseq's launcher reports which one above
    local resume="from scratch (no checkpoint was saved yet)"
    [[ -s "$dir/checkpoint_last.pt" ]] && resume="from $dir/checkpoint_last.pt"
    echo "error: fairseq-train stopped with exit status $status ($dir/train.log has the traceback);" \
         "re-running the same command resumes $resume" >&2
    exit "$status"
  fi
}

# shellcheck disable=SC2086  # EXTRA and WARM_START_EXTRA are lists of flags
if [[ -z "${WARM_START:-}" ]]; then
  fairseq_train "$SAVE_DIR" "$HEADS" "$MAX_UPDATE" "$WARMUP" 1e-07 "${PATIENCE:-}" ${EXTRA:-}
  exit 0
fi

# warm start: transformer phase -> collab-reparametrize -> collaborative phase
[[ "$HEADS" == collab ]] || { echo "error: WARM_START needs HEADS=collab (got $HEADS)" >&2; exit 2; }
PHASE=$(python3 "$REPO/collab_fairseq/cli/warm_start_schedule.py" --lr "$LR" --warmup "$WARMUP" \
  --warm-start "$WARM_START" --max-update "$MAX_UPDATE") || exit 2
eval "$PHASE"  # WARMUP_INIT_LR WARMUP_UPDATES MAX_UPDATE of the collaborative phase
INIT="$SAVE_DIR/warm_start_dk$KEY_DIM.pt"
if [[ ! -s "$SAVE_DIR/checkpoint_last.pt" && ! -s "$INIT" ]]; then
  fairseq_train "$SAVE_DIR/warm_start" transformer "$WARM_START" "$WARMUP" 1e-07 "" ${WARM_START_EXTRA:-}
  reparam=(python3 -m collab_fairseq.cli.reparametrize "$SAVE_DIR/warm_start/checkpoint_last.pt" "$INIT"
           --key-dim "$KEY_DIM" --attentions "$ATTENTIONS" --report "$SAVE_DIR/warm_start/reparametrize.json" --force)
  if [[ "$DRY_RUN" == 1 ]]; then print_command "${reparam[@]}"; else "${reparam[@]}"; fi
fi
START=(--finetune-from-model "$INIT"); [[ -s "$SAVE_DIR/checkpoint_last.pt" ]] && START=()  # resuming
# fp16: continue at the loss scale the transformer phase reached (collab-reparametrize's report keeps it); a fresh
# scaler would start at 128 and skip updates finding it again (results/performance/README.md, fp16 loss scale).
# EXTRA comes after it, so an explicit --fp16-init-scale there wins.
SCALE=()
if [[ "${FP16:-1}" == 1 && -s "$SAVE_DIR/warm_start/reparametrize.json" ]]; then
  SCALE=($(python3 -c 'import json, sys
s = json.load(open(sys.argv[1])).get("source_fp16_loss_scale")
print("" if s is None else f"--fp16-init-scale {max(1, int(s))}")' "$SAVE_DIR/warm_start/reparametrize.json"))
fi
fairseq_train "$SAVE_DIR" collab "$MAX_UPDATE" "$WARMUP_UPDATES" "$WARMUP_INIT_LR" "${PATIENCE:-}" "${SCALE[@]}" \
  ${EXTRA:-} "${START[@]}"
