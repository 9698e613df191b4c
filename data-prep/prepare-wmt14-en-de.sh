#!/usr/bin/env bash
# WMT14 English-German as in the paper: Europarl v7 + Common Crawl + News Commentary v9 for training,
# newstest2013 (valid), newstest2014 (test, the "full" version sacreBLEU uses). Cleaning (NFKC, length <= 250
# words, ratio <= 1.5), one joint sentencepiece model (32k by default) trained on a sample, binarized with
# fairseq-preprocess --joined-dictionary.
# Hardware: CPU; ~1-2 h on 16 cores for the full 4.5M pairs (sentencepiece on a 4M-sentence sample dominates).
#
# usage: data-prep/prepare-wmt14-en-de.sh [--raw-dir DIR] [--out-dir DIR] [--vocab-size N] [--sample N] [--workers N]
#   --raw-dir DIR  offline: DIR holds europarl-v7.de-en, commoncrawl.de-en, news-commentary-v9.de-en, newstest2013
#                  and newstest2014 as NAME.en / NAME.de (plain or .gz), e.g. extracted from the official archives
#   without it the official archives are downloaded from statmt.org
set -euo pipefail
RAW_DIR=""
OUT_DIR="${OUT_DIR:-work/wmt14_en_de}"
VOCAB_SIZE="${VOCAB_SIZE:-32000}"
SAMPLE="${SAMPLE:-4000000}"
WORKERS="${WORKERS:-8}"
source "$(dirname "$0")/lib.sh"
parse_prep_args "$@"
TOOLS="$(cd "$(dirname "$0")" && pwd)/tools"
require_python_modules sentencepiece fairseq_cli

TRAIN_CORPORA=(europarl-v7.de-en commoncrawl.de-en news-commentary-v9.de-en)
# newstest files as sacreBLEU has them (sha256 of the uncompressed files)
declare -A SHA256=(
  [newstest2013.en]=ace268a1d9724ca76f6d8e5c720ffdc08f01bdce45630ed8b269dc7918e1c16e
  [newstest2013.de]=d7ea35ab91ff3709e03ad9cb6bf5b4f2cc775cd2d72efd5254c4aec5e69663ca
  [newstest2014.en]=7294bccf2879a97b3706b95c9595f1459617a8ee7130d5d8581c910e69736971
  [newstest2014.de]=ae5d110486bc33d7175e9e28c7d0051eb3e5fcd2166dd93371089852c091a20e
)
RAW="$OUT_DIR/raw"
mkdir -p "$RAW" "$OUT_DIR/clean" "$OUT_DIR/spm"

step "raw corpora"
if [[ -n "$RAW_DIR" ]]; then
  for name in "${TRAIN_CORPORA[@]}" newstest2013 newstest2014; do
    for lang in en de; do
      [[ -s "$RAW/$name.$lang" ]] && continue
      if [[ -f "$RAW_DIR/$name.$lang" ]]; then atomic "$RAW/$name.$lang" cat "$RAW_DIR/$name.$lang"
      elif [[ -f "$RAW_DIR/$name.$lang.gz" ]]; then atomic "$RAW/$name.$lang" gunzip -c "$RAW_DIR/$name.$lang.gz"
      else die "missing $RAW_DIR/$name.$lang (or .gz): --raw-dir must hold ${TRAIN_CORPORA[*]} newstest2013 newstest2014 as NAME.en/NAME.de"
      fi
    done
  done
else
  fetch_wmt14 "$RAW"
fi
for name in newstest2013 newstest2014; do
  for lang in en de; do
    sha256_ok "$RAW/$name.$lang" "${SHA256[$name.$lang]}" || die "$RAW/$name.$lang is not the official $name (sha256 differs)"
  done
done

step "clean training pairs"
for name in "${TRAIN_CORPORA[@]}"; do
  [[ -s "$OUT_DIR/clean/$name.de" ]] || python3 "$TOOLS/clean_corpus.py" --src "$RAW/$name.en" \
    --tgt "$RAW/$name.de" --out-prefix "$OUT_DIR/clean/$name" --langs en de
done
for lang in en de; do
  parts=(); for name in "${TRAIN_CORPORA[@]}"; do parts+=("$OUT_DIR/clean/$name.$lang"); done
  [[ -s "$OUT_DIR/clean/train.$lang" ]] || atomic "$OUT_DIR/clean/train.$lang" cat "${parts[@]}"
  [[ -s "$OUT_DIR/clean/valid.$lang" ]] || atomic "$OUT_DIR/clean/valid.$lang" cat "$RAW/newstest2013.$lang"
  [[ -s "$OUT_DIR/clean/test.$lang" ]] || atomic "$OUT_DIR/clean/test.$lang" cat "$RAW/newstest2014.$lang"
done

sentencepiece_splits "$OUT_DIR/clean" "$OUT_DIR/spm" "$VOCAB_SIZE" "$SAMPLE" "train valid test" "en de"

step "fairseq-preprocess ($WORKERS workers)"
binarize "$OUT_DIR/spm" "$OUT_DIR/bin" en de train valid test "$WORKERS"
echo "done: $OUT_DIR/bin (test references: $RAW/newstest2014.de)"
