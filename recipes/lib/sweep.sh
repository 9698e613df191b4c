#!/usr/bin/env bash
# Generic grid runner used by the corpus sweep.sh scripts: train + evaluate every HEADS:KEY_DIM:SEED entry,
# PARALLEL at a time, then print the table (python -m collab_fairseq.cli.make_table).
# Environment: RECIPE_DIR (the corpus recipe folder, with train.sh and evaluate.sh), CORPUS, PARALLEL (1),
#   RUNS_DIR (work/$CORPUS/runs), TABLE (results/$CORPUS/table.md), PLOT (results/$CORPUS/bleu.png),
#   SUMMARY (results/${CORPUS}_table.json: one JSON row per table row, marked with RUNS_DIR as its study; rows of
#     other studies in it are kept; SUMMARY= for none),
#   TAG (suffix of run names for ablations), plus the corpus train.sh variables (EXTRA, WARM_START, MAX_UPDATE ...).
#   SWEEP_GPUS: GPU ids, e.g. "0 1 2 3": each run gets one of them (round robin over the grid's order), so a
#     grid fills a multi-GPU machine with single-GPU runs; unset: every run sees every visible GPU (and trains
#     on all of them through fairseq's distributed training). DRY_RUN=1: print each run's name and GPU only.
# Arguments: the grid entries, e.g. transformer:512:1 collab:128:1.
set -euo pipefail
: "${RECIPE_DIR:?}"; : "${CORPUS:?}"
RUNS_DIR="${RUNS_DIR:-work/$CORPUS/runs}"
TABLE="${TABLE-results/$CORPUS/table.md}"  # TABLE= (empty): no table, e.g. for runs launched side by side
PLOT="${PLOT-results/$CORPUS/bleu.png}"
SUMMARY="${SUMMARY-results/${CORPUS}_table.json}"
[[ $# -gt 0 ]] || { echo "usage: $0 HEADS:KEY_DIM:SEED ..." >&2; exit 2; }
for entry in "$@"; do
  [[ "$entry" =~ ^(transformer|collab|concat):[0-9]+:[0-9]+$ ]] || { echo "error: bad grid entry '$entry' (want HEADS:KEY_DIM:SEED, e.g. collab:128:1)" >&2; exit 2; }
done
export PARALLEL="${PARALLEL:-1}" TAG="${TAG:-}" RECIPE_DIR RUNS_DIR

run_one() {  # INDEX HEADS:KEY_DIM:SEED
  local index="$1"
  IFS=: read -r heads key_dim seed <<<"$2"
  if [[ -n "${SWEEP_GPUS:-}" ]]; then
    read -r -a gpus <<<"$SWEEP_GPUS"
    export CUDA_VISIBLE_DEVICES="${gpus[$(( (index - 1) % ${#gpus[@]} ))]}"
  fi
  local tag="$TAG"
  [[ "$heads" == collab && -n "${WARM_START:-}" && -z "$TAG" ]] && tag="_ws${WARM_START}"  # warm start in the name
  local name="${heads}_dk${key_dim}${tag}_s${seed}"
  local dir="$RUNS_DIR/$name"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "$name CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-all}"; return 0; fi
  if [[ -s "$dir/bleu.json" ]]; then echo "[sweep] $name done already" >&2; return 0; fi
  local kd=""; [[ "$heads" == transformer ]] || kd="$key_dim"
  local warm=""; [[ "$heads" == collab ]] && warm="${WARM_START:-}"  # the warm start is for collaborative rows only
  if ! WARM_START="$warm" HEADS="$heads" KEY_DIM="$kd" SEED="$seed" SAVE_DIR="$dir" "$RECIPE_DIR/train.sh" >/dev/null; then
    echo "[sweep] $name: training failed (see $dir/train.log); re-run the sweep to resume it; its last lines:" >&2
    tail -n 15 "$dir/train.log" 2>/dev/null | sed 's/^/    /' >&2
    return 1
  fi
  META="{\"run\": \"$name\", \"heads\": \"$heads\", \"key_dim\": $key_dim, \"seed\": $seed, \"tag\": \"$tag\", \"warm_start\": ${warm:-null}}" \
    SAVE_DIR="$dir" "$RECIPE_DIR/evaluate.sh" >/dev/null || { echo "[sweep] $name: evaluation failed" >&2; return 1; }
  echo "[sweep] $name: $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["sacrebleu"])' "$dir/bleu.json") BLEU" >&2
}
export -f run_one
status=0
printf '%s\n' "$@" | nl -w1 -s' ' | xargs -P "$PARALLEL" -L1 bash -c 'run_one "$@"' _ || status=$?
[[ -z "$TABLE" || "${DRY_RUN:-0}" == 1 ]] || python3 -m collab_fairseq.cli.make_table "$RUNS_DIR" --out "$TABLE" ${PLOT:+--plot "$PLOT"} \
  ${SUMMARY:+--summary "$SUMMARY"}
(( status == 0 )) || { echo "error: some runs of the sweep failed (see above); the table holds the others" >&2; exit 1; }
