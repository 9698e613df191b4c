#!/usr/bin/env bash
# The paper's WMT14 En-De grid, one configuration after another on all visible GPUs: concatenated heads at
# D_k=512 (fairseq's transformer) and 128, collaborative at 512, 256, 128, 64; then the BLEU table and plot.
# Hardware: 8 GPUs, ~1-2 days per configuration at the default 100k updates (MAX_UPDATE to shorten).
# usage: recipes/wmt14_en_de/sweep.sh [GRID entries...]     env: RUNS_DIR, TABLE, PLOT, plus train.sh's
set -euo pipefail
GRID=("$@")
[[ ${#GRID[@]} -gt 0 ]] || GRID=(transformer:512:1 concat:128:1 collab:512:1 collab:256:1 collab:128:1 collab:64:1)
export RECIPE_DIR="$(cd "$(dirname "$0")" && pwd)" CORPUS=wmt14_en_de PARALLEL=1
exec "$RECIPE_DIR/../lib/sweep.sh" "${GRID[@]}"
