#!/usr/bin/env bash
# Re-parametrize a trained transformer run into collaborative heads at several D_k, score each without
# retraining, and fine-tune some of them (the corpus reparametrize.sh scripts set the defaults).
# Environment: RECIPE_DIR (corpus recipe folder with train.sh / evaluate.sh), SOURCE (run dir of a trained
#   fairseq transformer or --collab-mode concatenate model; its checkpoint_best.pt is converted),
#   OUT_DIR (where the reparam_dk<D>[_ft<U>] runs go), KEY_DIMS (e.g. "512 384 256 192 128 64"),
#   FINETUNE_DIMS (subset of KEY_DIMS to fine-tune), FINETUNE_UPDATES, FINETUNE_LR, FINETUNE_WARMUP.
# Each run dir gets bleu.json (make_table reads it) and reparametrize.json (per-layer error and time).
set -euo pipefail
: "${RECIPE_DIR:?}"; : "${SOURCE:?set SOURCE to a trained run directory}"; : "${OUT_DIR:?}"
[[ -s "$SOURCE/checkpoint_best.pt" ]] || { echo "error: $SOURCE/checkpoint_best.pt not found: train the source first" >&2; exit 1; }
SOURCE_NAME=$(basename "$SOURCE")
for d in ${KEY_DIMS:?}; do
  run="$OUT_DIR/reparam_dk$d"
  mkdir -p "$run"
  if [[ ! -s "$run/bleu.json" ]]; then
    python3 -m collab_fairseq.cli.reparametrize "$SOURCE/checkpoint_best.pt" "$run/checkpoint_best.pt" --key-dim "$d" \
      --report "$run/reparametrize.json" --force > "$run/reparametrize.log" 2>&1
    META="{\"run\": \"reparam_dk$d\", \"heads\": \"collab\", \"key_dim\": $d, \"seed\": 1, \"tag\": \"_reparam\", \"source\": \"$SOURCE_NAME\", \"finetune_updates\": 0}" \
      SAVE_DIR="$run" "$RECIPE_DIR/evaluate.sh" >/dev/null
  fi
  echo "[reparam] D_k=$d no retraining: $(python3 -c "import json; print(json.load(open('$run/bleu.json'))['sacrebleu'])") BLEU" >&2
done
for d in ${FINETUNE_DIMS:-}; do
  ft="$OUT_DIR/reparam_dk${d}_ft${FINETUNE_UPDATES:?}"
  if [[ ! -s "$ft/bleu.json" ]]; then
    WARM_START= HEADS=collab KEY_DIM="$d" SAVE_DIR="$ft" MAX_UPDATE="$FINETUNE_UPDATES" LR="${FINETUNE_LR:?}" WARMUP="${FINETUNE_WARMUP:?}" \
      EXTRA="${EXTRA:-} --finetune-from-model $OUT_DIR/reparam_dk$d/checkpoint_best.pt" "$RECIPE_DIR/train.sh" >/dev/null
    META="{\"run\": \"reparam_dk${d}_ft\", \"heads\": \"collab\", \"key_dim\": $d, \"seed\": 1, \"tag\": \"_reparam_ft$FINETUNE_UPDATES\", \"source\": \"$SOURCE_NAME\", \"finetune_updates\": $FINETUNE_UPDATES}" \
      SAVE_DIR="$ft" "$RECIPE_DIR/evaluate.sh" >/dev/null
  fi
  echo "[reparam] D_k=$d + $FINETUNE_UPDATES updates: $(python3 -c "import json; print(json.load(open('$ft/bleu.json'))['sacrebleu'])") BLEU" >&2
done
