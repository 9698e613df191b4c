#!/usr/bin/env bash
# Train one Multi30k grid with two code versions side by side on the same GPU and the same binarized data,
# each version with its own recipes (recipes/multi30k_en_de/sweep.sh: train, best checkpoint, beam 5,
# sacreBLEU on test2016), so that a difference in BLEU is the code's, not the data's or the machine's.
#
# usage: benchmarks/compare_code_versions.sh start OLD_TREE "OLD GRID" NEW_TREE "NEW GRID"
#        benchmarks/compare_code_versions.sh wait SECONDS      (until every run has bleu.json, or SECONDS pass)
#   OLD_TREE / NEW_TREE: checkouts (e.g. `git archive f1cdcc2 | tar -x -C work/code_f1cdcc2`, and .);
#   GRID: sweep entries HEADS:KEY_DIM:SEED, e.g. "collab:128:1 collab:128:2 concat:128:1"
#   env: DATA (work/multi30k_en_de/bin, with raw/ beside it), WORK (/tmp/compare_code: runs, logs),
#        NEW_ENV (assignments for the new tree's sweep, default WARM_START= : collab rows from scratch)
# Every run of both grids starts at once (8 Multi30k trainings fit side by side on one H100).
set -euo pipefail
WORK="${WORK:-/tmp/compare_code}"
DATA="$(cd "${DATA:-work/multi30k_en_de/bin}" && pwd)"

start_grid() {  # NAME TREE "GRID" [VAR=value ...]
  local name="$1" tree grid="$3"; tree="$(cd "$2" && pwd)"; shift 3
  mkdir -p "$WORK/$name"
  read -r -a entries <<<"$grid"
  echo "${#entries[@]}" >"$WORK/$name/expected"
  (cd "$tree" && env DATA="$DATA" RUNS_DIR="$WORK/$name" TABLE="$WORK/$name/table.md" PLOT="$WORK/$name/bleu.png" \
    PARALLEL="${#entries[@]}" "$@" setsid nohup bash recipes/multi30k_en_de/sweep.sh "${entries[@]}" \
    >"$WORK/$name.log" 2>&1 &)
}

case "${1:-}" in
  start)
    [[ $# -eq 5 ]] || { echo "usage: $0 start OLD_TREE 'OLD GRID' NEW_TREE 'NEW GRID'" >&2; exit 2; }
    start_grid old "$2" "$3"
    # shellcheck disable=SC2086  # NEW_ENV is a list of assignments
    start_grid new "$4" "$5" ${NEW_ENV-WARM_START=}
    echo "started: $WORK/old ($3) and $WORK/new ($5)" ;;
  wait)
    deadline=$((SECONDS + ${2:-540}))
    while ((SECONDS < deadline)); do
      done_runs=$(find "$WORK" -name bleu.json | wc -l)
      expected=$(($(cat "$WORK/old/expected") + $(cat "$WORK/new/expected")))
      ((done_runs >= expected)) && { echo "all $expected runs scored"; exit 0; }
      sleep 20
    done
    echo "$done_runs of $expected runs scored after ${2:-540} s" ;;
  *) echo "usage: $0 start|wait ..." >&2; exit 2 ;;
esac
