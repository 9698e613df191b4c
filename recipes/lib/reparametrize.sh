#!/usr/bin/env bash
# Re-parametrize a trained transformer run into collaborative heads at several D_k, score each without
# retraining, and fine-tune some of them (the corpus reparametrize.sh scripts set the defaults).
# Environment: RECIPE_DIR (corpus recipe folder with train.sh / evaluate.sh), SOURCE (run dir of a trained
#   fairseq transformer or --collab-mode concatenate model; its checkpoint_best.pt is converted),
#   OUT_DIR (where the reparam_dk<D>[_ft<U>] runs go), KEY_DIMS (e.g. "512 384 256 192 128 64"),
#   FINETUNE_DIMS (subset of KEY_DIMS to fine-tune), FINETUNE_UPDATES, FINETUNE_LR, FINETUNE_WARMUP,
#   MAX_ERRORS (e.g. "0.5 0.7": each layer gets the smallest D_k within that relative error; runs reparam_err<E>),
#   UNIFORM (e.g. "encoder_decoder all": the source with those attentions made uniform, no decomposition; runs
#   uniform_<attentions>; a control for whether the model's attention is doing work at all).
# Each run dir gets bleu.json (make_table reads it) and reparametrize.json (per-layer error and time).
set -euo pipefail
: "${RECIPE_DIR:?}"; : "${SOURCE:?set SOURCE to a trained run directory}"; : "${OUT_DIR:?}"
[[ -s "$SOURCE/checkpoint_best.pt" ]] || { echo "error: $SOURCE/checkpoint_best.pt not found: train the source first" >&2; exit 1; }
SOURCE_NAME=$(basename "$SOURCE")
score() {  # RUN_DIR HEADS KEY_DIM TAG [FINETUNE_UPDATES]: evaluate RUN_DIR/checkpoint_best.pt into its bleu.json
  local run="$1" heads="$2" key_dim="$3" tag="$4" updates="${5:-0}" name
  name=$(basename "$run")
  if [[ ! -s "$run/bleu.json" ]]; then
    META="{\"run\": \"$name\", \"heads\": \"$heads\", \"key_dim\": $key_dim, \"seed\": 1, \"tag\": \"$tag\", \"source\": \"$SOURCE_NAME\", \"finetune_updates\": $updates}" \
      SAVE_DIR="$run" "$RECIPE_DIR/evaluate.sh" >/dev/null
  fi
  echo "[reparam] $name: $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["sacrebleu"])' "$run/bleu.json") BLEU" >&2
}
convert() {  # RUN_DIR [reparametrize flags]: CP-convert the source into RUN_DIR/checkpoint_best.pt once
  local run="$1"; shift
  mkdir -p "$run"
  [[ -s "$run/checkpoint_best.pt" ]] || python3 -m collab_fairseq.cli.reparametrize "$SOURCE/checkpoint_best.pt" \
    "$run/checkpoint_best.pt" "$@" --report "$run/reparametrize.json" --force > "$run/reparametrize.log" 2>&1
}
for d in ${KEY_DIMS:?}; do
  convert "$OUT_DIR/reparam_dk$d" --key-dim "$d"
  score "$OUT_DIR/reparam_dk$d" collab "$d" _reparam
done
for e in ${MAX_ERRORS:-}; do
  convert "$OUT_DIR/reparam_err$e" --max-error "$e"
  mean_key_dim=$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["layers"]; print(round(sum(x["key_dim"] for x in r) / len(r)))' \
    "$OUT_DIR/reparam_err$e/reparametrize.json")
  score "$OUT_DIR/reparam_err$e" collab "$mean_key_dim" "_reparam_err$e"  # D_k: the mean over layers
done
if [[ -n "${UNIFORM:-}" ]]; then  # the uniform copies keep the source's heads: its kind and full D_k
  read -r SOURCE_HEADS SOURCE_KEY_DIM < <(python3 -c '
import sys
from collab_fairseq.reparam.convert_checkpoint import load_checkpoint, model_args
args = model_args(load_checkpoint(sys.argv[1]))
concat = getattr(args, "collab_mode", None) == "concatenate"
print("concat" if concat else "transformer", (concat and args.collab_key_dim) or args.encoder_embed_dim)' "$SOURCE/checkpoint_best.pt")
fi
for attentions in ${UNIFORM:-}; do
  run="$OUT_DIR/uniform_$attentions" tag="_uniform_$attentions"; mkdir -p "$run"
  [[ "$attentions" == all ]] && attentions=encoder_self,decoder_self,encoder_decoder
  [[ -s "$run/checkpoint_best.pt" ]] || python3 -m collab_fairseq.cli.uniform_attention "$SOURCE/checkpoint_best.pt" \
    "$run/checkpoint_best.pt" --attentions "$attentions" --force >/dev/null
  score "$run" "$SOURCE_HEADS" "$SOURCE_KEY_DIM" "$tag"
done
for d in ${FINETUNE_DIMS:-}; do
  ft="$OUT_DIR/reparam_dk${d}_ft${FINETUNE_UPDATES:?}"
  if [[ ! -s "$ft/bleu.json" ]]; then
    WARM_START= HEADS=collab KEY_DIM="$d" SAVE_DIR="$ft" MAX_UPDATE="$FINETUNE_UPDATES" LR="${FINETUNE_LR:?}" WARMUP="${FINETUNE_WARMUP:?}" \
      EXTRA="${EXTRA:-} --finetune-from-model $OUT_DIR/reparam_dk$d/checkpoint_best.pt" "$RECIPE_DIR/train.sh" >/dev/null
  fi
  score "$ft" collab "$d" "_reparam_ft$FINETUNE_UPDATES" "$FINETUNE_UPDATES"
done
