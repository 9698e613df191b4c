#!/usr/bin/env bash
# The grid on IWSLT'14 De-En (transformer_iwslt_de_en sizes), PARALLEL at a time on the visible GPU(s).
# Hardware: 1 GPU; ~1 h per model alone, several fit side by side.
# usage: recipes/iwslt14_de_en/sweep.sh [GRID entries...]   env: PARALLEL (4), RUNS_DIR, TABLE, PLOT, plus train.sh's
set -euo pipefail
GRID=("$@")
[[ ${#GRID[@]} -gt 0 ]] || GRID=(transformer:512:1 transformer:512:2 concat:128:1 collab:512:1 collab:256:1 collab:128:1 collab:128:2 collab:64:1)
export RECIPE_DIR="$(cd "$(dirname "$0")" && pwd)" CORPUS=iwslt14_de_en PARALLEL="${PARALLEL:-4}"
exec "$RECIPE_DIR/../lib/sweep.sh" "${GRID[@]}"
