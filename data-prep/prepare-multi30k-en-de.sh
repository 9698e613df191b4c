#!/usr/bin/env bash
# Multi30k task 1 English-German (29k training pairs): the quick real benchmark.
# Joint sentencepiece (unigram, 8k by default) -> fairseq-preprocess --joined-dictionary.
# Hardware: CPU only, ~1 minute. Re-running skips finished steps; every output is written atomically.
#
# usage: data-prep/prepare-multi30k-en-de.sh [--raw-dir DIR] [--out-dir DIR] [--vocab-size N] [--workers N]
#   --raw-dir DIR   directory with {train,val,test_2016_flickr}.{en,de}.gz (offline; e.g. ../shared/data/multi30k_en_de)
#                   without it the files are downloaded from the multi30k/dataset GitHub repository
set -euo pipefail

RAW_DIR=""
OUT_DIR="${OUT_DIR:-work/multi30k_en_de}"
VOCAB_SIZE="${VOCAB_SIZE:-8000}"
WORKERS="${WORKERS:-4}"
source "$(dirname "$0")/lib.sh"
parse_prep_args "$@"
URL="https://raw.githubusercontent.com/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw"
SPLITS=(train val test_2016_flickr)
declare -A SHA256=(
  [train.en.gz]=d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f
  [train.de.gz]=726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6
  [val.en.gz]=14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28
  [val.de.gz]=f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a
  [test_2016_flickr.en.gz]=611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9
  [test_2016_flickr.de.gz]=9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8
)
TOOLS="$(cd "$(dirname "$0")" && pwd)/tools"
require_python_modules sentencepiece fairseq_cli

mkdir -p "$OUT_DIR/raw" "$OUT_DIR/spm"
step "fetch and verify raw files"
for split in "${SPLITS[@]}"; do
  for lang in en de; do
    name="$split.$lang.gz"
    if [[ -n "$RAW_DIR" ]]; then
      fetch_local "$RAW_DIR/$name" "$OUT_DIR/raw/$name" "${SHA256[$name]}"
    else
      fetch_url "$URL/$name" "$OUT_DIR/raw/$name" "${SHA256[$name]}"
    fi
    [[ -s "$OUT_DIR/raw/$split.$lang" ]] || atomic "$OUT_DIR/raw/$split.$lang" gunzip -c "$OUT_DIR/raw/$name"
  done
done

sentencepiece_splits "$OUT_DIR/raw" "$OUT_DIR/spm" "$VOCAB_SIZE" 2000000 "train val test_2016_flickr" "en de"

step "fairseq-preprocess"
binarize "$OUT_DIR/spm" "$OUT_DIR/bin" en de train val test_2016_flickr "$WORKERS"
echo "done: $OUT_DIR/bin (test set: test_2016_flickr -> subset 'test'; references: $OUT_DIR/raw/test_2016_flickr.de)"
