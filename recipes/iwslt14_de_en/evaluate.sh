#!/usr/bin/env bash
# IWSLT'14 De-En: best checkpoint (validation loss), beam 5, sacreBLEU on the lowercased test set.
# usage: SAVE_DIR=work/iwslt14_de_en/runs/collab_dk128_s1 recipes/iwslt14_de_en/evaluate.sh
set -euo pipefail
export DATA="${DATA:-work/iwslt14_de_en/bin}"
: "${SAVE_DIR:?set SAVE_DIR to a run directory of train.sh}"
export SAVE_DIR REFERENCE="${REFERENCE:-$(dirname "$DATA")/clean/test.en}" BEAM="${BEAM:-5}"
exec "$(dirname "$0")/../lib/evaluate.sh"
