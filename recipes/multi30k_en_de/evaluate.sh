#!/usr/bin/env bash
# Multi30k: best checkpoint (validation loss), beam 5, detokenized sacreBLEU on test_2016_flickr.
# usage: SAVE_DIR=work/multi30k_en_de/runs/collab_dk128_s1 recipes/multi30k_en_de/evaluate.sh
set -euo pipefail
export DATA="${DATA:-work/multi30k_en_de/bin}"
: "${SAVE_DIR:?set SAVE_DIR to a run directory of train.sh}"
export REFERENCE="${REFERENCE:-$(dirname "$DATA")/raw/test_2016_flickr.de}" BEAM="${BEAM:-5}" LENPEN="${LENPEN:-1.0}"
export SAVE_DIR
exec "$(dirname "$0")/../lib/evaluate.sh"
