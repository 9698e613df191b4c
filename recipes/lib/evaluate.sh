#!/usr/bin/env bash
# Score one trained run: checkpoint selection, beam search, sacreBLEU -> $SAVE_DIR/bleu.json (+ hypotheses).
# Environment: DATA, SAVE_DIR, REFERENCE (raw target of the test set), SUBSET (default test),
#   BEAM (5), LENPEN (1.0), CHECKPOINT (default: checkpoint_best.pt, selected on validation loss),
#   AVERAGE_LAST (N > 0: average the last N update checkpoints instead), TOKENIZED_BLEU (1: add tokenized BLEU),
#   REMOVE_BPE (sentencepiece), GENERATE_ARGS (more fairseq-generate flags), META (JSON object merged into the result),
#   RESULT (default $SAVE_DIR/bleu.json), HYPOTHESES (default $SAVE_DIR/hypotheses.txt), SHARDS (default: one per GPU)
set -euo pipefail
: "${DATA:?}"; : "${SAVE_DIR:?}"; : "${REFERENCE:?set REFERENCE to the raw test target file}"
[[ -f "$REFERENCE" ]] || { echo "error: reference $REFERENCE not found (run the data-prep script)" >&2; exit 1; }
CKPT="${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}"
if [[ "${AVERAGE_LAST:-0}" -gt 0 ]]; then
  CKPT="$SAVE_DIR/averaged_last${AVERAGE_LAST}.pt"
  if [[ ! -s "$CKPT" ]]; then
    python3 -m collab_fairseq.cli.average_checkpoints --inputs "$SAVE_DIR" --num-update-checkpoints "$AVERAGE_LAST" --output "$CKPT"
  fi
fi
[[ -s "$CKPT" ]] || { echo "error: checkpoint $CKPT not found: train first" >&2; exit 1; }
FLAGS=(); [[ "${TOKENIZED_BLEU:-0}" == 1 ]] && FLAGS=(--tokenized-bleu)
python3 -m collab_fairseq.cli.evaluate --data "$DATA" --checkpoint "$CKPT" --reference "$REFERENCE" \
  --subset "${SUBSET:-test}" --beam "${BEAM:-5}" --lenpen "${LENPEN:-1.0}" "${FLAGS[@]}" \
  --remove-bpe "${REMOVE_BPE:-sentencepiece}" --generate-args "${GENERATE_ARGS:-}" --shards "${SHARDS:-0}" \
  --hypotheses "${HYPOTHESES:-$SAVE_DIR/hypotheses.txt}" --out "${RESULT:-$SAVE_DIR/bleu.json}" --meta "${META:-{\}}"
