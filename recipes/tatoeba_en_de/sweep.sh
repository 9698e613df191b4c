#!/usr/bin/env bash
# The grid on Tatoeba En-De, at an update budget chosen on validation loss: first fairseq's transformer (seed 1) is
# trained to convergence (PATIENCE=5 validations without a better validation loss, MAX_UPDATE=40000 at most; run
# budget_transformer_s1), then every HEADS:KEY_DIM:SEED entry trains for the update of that run's best validation
# loss, PARALLEL at a time, and the table and plot are printed. BUDGET=N skips the first step.
# Hardware: 1 GPU.
#
# usage: recipes/tatoeba_en_de/sweep.sh [GRID entries...]
#   GRID default: transformer:512:{1,2,3} collab:{128,64,32}:{1,2,3} (warm start) concat:{128,32}:{1,2,3};
#   the collaborative rows from scratch: WARM_START= TAG=_scratch recipes/tatoeba_en_de/sweep.sh collab:128:{1,2,3}
#   env: BUDGET, PATIENCE (5), PARALLEL (4), RUNS_DIR (work/tatoeba_en_de/runs), TABLE (results/tatoeba_en_de/table.md),
#   plus train.sh's
set -euo pipefail
GRID=("$@")
if [[ ${#GRID[@]} -eq 0 ]]; then
  for seed in 1 2 3; do
    GRID+=(transformer:512:$seed collab:128:$seed collab:64:$seed collab:32:$seed concat:128:$seed concat:32:$seed)
  done
fi
export RECIPE_DIR="$(cd "$(dirname "$0")" && pwd)" CORPUS=tatoeba_en_de PARALLEL="${PARALLEL:-4}" WARM_START="${WARM_START-2000}"
RUNS_DIR="${RUNS_DIR:-work/tatoeba_en_de/runs}"
REPO="$(cd "$RECIPE_DIR/../.." && pwd)"
if [[ -z "${BUDGET:-}" ]]; then
  budget_dir="$RUNS_DIR/budget_transformer_s1"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "budget: HEADS=transformer SEED=1 PATIENCE=${PATIENCE:-5} SAVE_DIR=$budget_dir $RECIPE_DIR/train.sh" >&2
    BUDGET=BUDGET
  else
    [[ -s "$budget_dir/checkpoint_best.pt" && -f "$budget_dir/.converged" ]] ||
      { HEADS=transformer SEED=1 PATIENCE="${PATIENCE:-5}" SAVE_DIR="$budget_dir" "$RECIPE_DIR/train.sh" >/dev/null &&
        touch "$budget_dir/.converged"; } ||
      { echo "error: the budget run failed (see $budget_dir/train.log); re-run the sweep to resume it" >&2; exit 1; }
    BUDGET="$(python3 "$REPO/collab_fairseq/cli/best_update.py" "$budget_dir/train.log")"
  fi
fi
echo "[sweep] update budget: $BUDGET (the transformer's best validation loss)" >&2
export MAX_UPDATE="$BUDGET" RUNS_DIR
exec "$RECIPE_DIR/../lib/sweep.sh" "${GRID[@]}"
