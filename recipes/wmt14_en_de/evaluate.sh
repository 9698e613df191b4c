#!/usr/bin/env bash
# WMT14 En-De as the field reports it: average of the last 5 update checkpoints, beam 4, lenpen 0.6,
# newstest2014 translated in parallel shards (one per visible GPU) and merged in order; detokenized sacreBLEU
# (with signature) and tokenized BLEU with compound splitting -> $SAVE_DIR/bleu.json.
# usage: SAVE_DIR=work/wmt14_en_de/runs/collab_dk128_s1 recipes/wmt14_en_de/evaluate.sh
set -euo pipefail
export DATA="${DATA:-work/wmt14_en_de/bin}"
: "${SAVE_DIR:?set SAVE_DIR to a run directory of train.sh}"
export SAVE_DIR REFERENCE="${REFERENCE:-$(dirname "$DATA")/raw/newstest2014.de}"
export BEAM="${BEAM:-4}" LENPEN="${LENPEN:-0.6}" AVERAGE_LAST="${AVERAGE_LAST:-5}" TOKENIZED_BLEU=1
exec "$(dirname "$0")/../lib/evaluate.sh"
