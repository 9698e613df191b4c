#!/usr/bin/env bash
# Tatoeba: best checkpoint (validation loss), beam 5, detokenized sacreBLEU on the grouped test split (3,000 pairs).
# usage: SAVE_DIR=work/tatoeba_en_de/runs/collab_dk128_ws2000_s1 recipes/tatoeba_en_de/evaluate.sh
set -euo pipefail
export DATA="${DATA:-work/tatoeba_en_de/bin}"
: "${SAVE_DIR:?set SAVE_DIR to a run directory of train.sh}"
export REFERENCE="${REFERENCE:-$(dirname "$DATA")/raw/test.de}" BEAM="${BEAM:-5}" LENPEN="${LENPEN:-1.0}"
export SAVE_DIR
exec "$(dirname "$0")/../lib/evaluate.sh"
