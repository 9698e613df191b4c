#!/usr/bin/env bash
# Tatoeba English-German (166,813 short conversational pairs, CC BY 2.0; ../shared/data/tatoeba_deu_eng): a second
# real corpus, 6x Multi30k's pairs, another domain. The corpus has no split: valid (2,000 pairs) and test (3,000)
# are split off by groups of pairs that share an English or a German sentence (data-prep/tools/group_split.py), so
# no held-out sentence occurs in training on either side. Joint sentencepiece (unigram, 8k by default) ->
# fairseq-preprocess --joined-dictionary.
# Hardware: CPU only, ~45 s on 2 cores. Re-running skips finished steps and refuses changed settings; every output is
# written atomically.
#
# usage: data-prep/prepare-tatoeba-en-de.sh --raw-dir DIR [--out-dir DIR] [--vocab-size N] [--workers N]
#   --raw-dir DIR   directory with train.{en,de}.gz as described in ../shared/data/tatoeba_deu_eng/README.md
#                   (offline only: the files are the manythings.org export, cleaned, with 3,000 pairs held back)
#   env: SPLIT_SEED (1), VALID_PAIRS (2000), TEST_PAIRS (3000)
set -euo pipefail

RAW_DIR=""
OUT_DIR="${OUT_DIR:-work/tatoeba_en_de}"
VOCAB_SIZE="${VOCAB_SIZE:-8000}"
WORKERS="${WORKERS:-4}"
SAMPLE="${SAMPLE:-2000000}"
source "$(dirname "$0")/lib.sh"
parse_prep_args "$@"
[[ -n "$RAW_DIR" ]] || die "pass --raw-dir with train.{en,de}.gz (e.g. ../shared/data/tatoeba_deu_eng): this corpus is prepared offline only"
declare -A SHA256=(
  [train.en.gz]=b524341564c47c58bccd218c78677528b8ef8fe3c2a62c58bb3ff7c8b99bb214
  [train.de.gz]=3f5fab214842a6b89c2b20f64862559ad3d2e21b3f055d26e30a5d94428cf6cb
)
TOOLS="$(cd "$(dirname "$0")" && pwd)/tools"
require_python_modules sentencepiece fairseq_cli

mkdir -p "$OUT_DIR/raw" "$OUT_DIR/spm"
step "verify raw files"
for lang in en de; do
  fetch_local "$RAW_DIR/train.$lang.gz" "$OUT_DIR/raw/all.$lang.gz" "${SHA256[train.$lang.gz]}"
  [[ -s "$OUT_DIR/raw/all.$lang" ]] || atomic "$OUT_DIR/raw/all.$lang" gunzip -c "$OUT_DIR/raw/all.$lang.gz"
done

step "split valid and test off by groups of pairs sharing a sentence"
python3 "$TOOLS/group_split.py" --src "$OUT_DIR/raw/all.en" --tgt "$OUT_DIR/raw/all.de" --src-lang en --tgt-lang de \
  --valid "${VALID_PAIRS:-2000}" --test "${TEST_PAIRS:-3000}" --seed "${SPLIT_SEED:-1}" --out-dir "$OUT_DIR/raw" ||
  die "the split failed (see above)"

# the segmentation and binarized data are of this split: a split made anew (other SPLIT_SEED in a fresh raw/)
# must not meet a model and data of the old one
split_sum="$(sha256sum "$OUT_DIR/raw/split.json" | cut -d' ' -f1)"
if [[ -f "$OUT_DIR/spm/split.sha256" && "$(cat "$OUT_DIR/spm/split.sha256")" != "$split_sum" ]]; then
  die "$OUT_DIR/spm and $OUT_DIR/bin were made from another split than $OUT_DIR/raw/split.json: delete them to prepare them again from this one, or choose another --out-dir"
fi
[[ -f "$OUT_DIR/spm/split.sha256" ]] || echo "$split_sum" > "$OUT_DIR/spm/split.sha256"
sentencepiece_splits "$OUT_DIR/raw" "$OUT_DIR/spm" "$VOCAB_SIZE" "$SAMPLE" "train valid test" "en de"

step "fairseq-preprocess"
binarize "$OUT_DIR/spm" "$OUT_DIR/bin" en de train valid test "$WORKERS"
echo "done: $OUT_DIR/bin (references: $OUT_DIR/raw/test.de; the split: $OUT_DIR/raw/split.json)"
