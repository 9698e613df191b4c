#!/usr/bin/env bash
# The paper's grid on Multi30k En-De: train + evaluate every HEADS:KEY_DIM:SEED entry, PARALLEL at a time
# (Multi30k models are small: 8 fit side by side on one H100), then print the table and plot.
# Hardware: 1 GPU, ~8 min for the default grid with PARALLEL=8 (H100).
#
# usage: recipes/multi30k_en_de/sweep.sh [GRID entries...]
#   GRID default: transformer:512:1 transformer:512:2 concat:128:1 collab:512:1 collab:256:1 collab:128:1 collab:128:2 collab:64:1
#   collab rows use the recipe's warm start (WARM_START=600, run names *_ws600_*); WARM_START= trains them from scratch
#   env: PARALLEL (8), RUNS_DIR (work/multi30k_en_de/runs), TABLE (results/multi30k_en_de/table.md), plus train.sh's
set -euo pipefail
GRID=("$@")
[[ ${#GRID[@]} -gt 0 ]] || GRID=(transformer:512:1 transformer:512:2 concat:128:1 collab:512:1 collab:256:1 collab:128:1 collab:128:2 collab:64:1)
export RECIPE_DIR="$(cd "$(dirname "$0")" && pwd)" CORPUS=multi30k_en_de PARALLEL="${PARALLEL:-8}" WARM_START="${WARM_START-600}"
exec "$RECIPE_DIR/../lib/sweep.sh" "${GRID[@]}"
