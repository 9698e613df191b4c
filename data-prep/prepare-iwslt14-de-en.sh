#!/usr/bin/env bash
# IWSLT'14 German-English, fairseq's split (examples/translation/prepare-iwslt14.sh): TED talk transcripts,
# lowercased, length-filtered (1-175 words, ratio 1.5); valid = every 23rd training pair, train = the rest;
# test = dev2010 + dev2012 (TEDX) + tst2010 + tst2011 + tst2012. Joint sentencepiece (10k) instead of
# Moses + BPE, then fairseq-preprocess --joined-dictionary. Same output layout as the other data-prep scripts.
# Hardware: CPU only, ~3 minutes.
#
# usage: data-prep/prepare-iwslt14-de-en.sh [--raw-dir DIR] [--out-dir DIR] [--vocab-size N] [--workers N]
#   --raw-dir DIR  offline: DIR holds the files of the de-en.tgz archive (train.tags.de-en.{de,en} and the
#                  IWSLT14.*.xml files), or the archive itself as DIR/de-en.tgz
set -euo pipefail
RAW_DIR=""
OUT_DIR="${OUT_DIR:-work/iwslt14_de_en}"
VOCAB_SIZE="${VOCAB_SIZE:-10000}"
WORKERS="${WORKERS:-4}"
source "$(dirname "$0")/lib.sh"
parse_prep_args "$@"
TOOLS="$(cd "$(dirname "$0")" && pwd)/tools"
require_python_modules sentencepiece fairseq_cli
URL="http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
TESTS=(IWSLT14.TED.dev2010 IWSLT14.TEDX.dev2012 IWSLT14.TED.tst2010 IWSLT14.TED.tst2011 IWSLT14.TED.tst2012)
RAW="$OUT_DIR/raw"
mkdir -p "$RAW" "$OUT_DIR/clean" "$OUT_DIR/spm"

step "raw files"
SRC_DIR="$RAW/de-en"
if [[ ! -s "$SRC_DIR/train.tags.de-en.de" ]]; then
  archive=""
  start_dir "$SRC_DIR"
  if [[ -n "$RAW_DIR" && -f "$RAW_DIR/train.tags.de-en.de" ]]; then
    cp "$RAW_DIR"/train.tags.de-en.* "$RAW_DIR"/IWSLT14.*.xml "$SRC_DIR.tmp"/ \
      || die "--raw-dir $RAW_DIR lacks the IWSLT14 xml files"
  else
    if [[ -n "$RAW_DIR" ]]; then archive="$RAW_DIR/de-en.tgz"; [[ -f "$archive" ]] || die "missing $RAW_DIR/train.tags.de-en.de or $archive"
    else archive="$RAW/de-en.tgz"; fetch_url "$URL" "$archive" ""; fi
    tar -xzf "$archive" -C "$SRC_DIR.tmp" --strip-components 1 || die "$archive is not a valid archive"
  fi
  finish_dir "$SRC_DIR"
fi
for f in train.tags.de-en.de train.tags.de-en.en; do [[ -s "$SRC_DIR/$f" ]] || die "missing $SRC_DIR/$f"; done

step "extract and lowercase; clean (1-175 words, ratio 1.5); valid = every 23rd pair"
for lang in de en; do
  [[ -s "$OUT_DIR/clean/all.$lang" ]] || atomic "$OUT_DIR/clean/all.$lang" python3 "$TOOLS/iwslt_text.py" train \
    "$SRC_DIR/train.tags.de-en.$lang"
  tests=(); for t in "${TESTS[@]}"; do tests+=("$SRC_DIR/$t.de-en.$lang.xml"); done
  [[ -s "$OUT_DIR/clean/test.$lang" ]] || atomic "$OUT_DIR/clean/test.$lang" python3 "$TOOLS/iwslt_text.py" xml "${tests[@]}"
done
[[ -s "$OUT_DIR/clean/kept.de" ]] || python3 "$TOOLS/clean_corpus.py" --src "$OUT_DIR/clean/all.de" \
  --tgt "$OUT_DIR/clean/all.en" --out-prefix "$OUT_DIR/clean/kept" --langs de en --max-words 175
for lang in de en; do
  [[ -s "$OUT_DIR/clean/valid.$lang" ]] || atomic "$OUT_DIR/clean/valid.$lang" awk 'NR % 23 == 0' "$OUT_DIR/clean/kept.$lang"
  [[ -s "$OUT_DIR/clean/train.$lang" ]] || atomic "$OUT_DIR/clean/train.$lang" awk 'NR % 23 != 0' "$OUT_DIR/clean/kept.$lang"
done

sentencepiece_splits "$OUT_DIR/clean" "$OUT_DIR/spm" "$VOCAB_SIZE" 2000000 "train valid test" "de en"

step "fairseq-preprocess"
binarize "$OUT_DIR/spm" "$OUT_DIR/bin" de en train valid test "$WORKERS"
echo "done: $OUT_DIR/bin (test references: $OUT_DIR/clean/test.en, lowercased as fairseq's setup)"
