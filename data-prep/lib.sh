# Shared helpers of the data-prep scripts (sourced). Every output is produced under a temporary
# name and renamed when complete, so an interrupted step is redone, never trusted.

step() { echo "[$(date +%H:%M:%S)] $*" >&2; }

die() { echo "error: $*" >&2; exit 1; }

require_python_modules() {
  for m in "$@"; do
    python3 -c 'import importlib, sys; importlib.import_module(sys.argv[1])' "$m" 2>/dev/null || die "python module '$m' not found: install this project first (pip install -e .)"
  done
}

# atomic OUT CMD...: run CMD with stdout to OUT.tmp, then rename to OUT.
atomic() {
  local out="$1"; shift
  "$@" >"$out.tmp" || { rm -f "$out.tmp"; die "failed: $* (for $out)"; }
  mv -f "$out.tmp" "$out"
}

sha256_ok() { [[ -z "$2" ]] || [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

# fetch_local SRC DST SHA256: copy a pre-downloaded file (offline clusters), verified.
fetch_local() {
  local src="$1" dst="$2" sum="$3"
  [[ -s "$dst" ]] && sha256_ok "$dst" "$sum" && return 0
  [[ -f "$src" ]] || die "missing raw file $src (expected in --raw-dir $(dirname "$src"))"
  sha256_ok "$src" "$sum" || die "checksum mismatch for $src: expected sha256 $sum; re-download it"
  cp "$src" "$dst.tmp" && mv -f "$dst.tmp" "$dst"
}

# fetch_url URL DST SHA256: download, verified.
fetch_url() {
  local url="$1" dst="$2" sum="$3"
  [[ -s "$dst" ]] && sha256_ok "$dst" "$sum" && return 0
  command -v curl >/dev/null || die "curl not found: install it, or download the files and pass --raw-dir"
  step "download $url"
  curl -fsSL --retry 3 -o "$dst.tmp" "$url" || { rm -f "$dst.tmp"; die "download failed: $url (offline? use --raw-dir)"; }
  sha256_ok "$dst.tmp" "$sum" || { rm -f "$dst.tmp"; die "checksum mismatch for $url"; }
  mv -f "$dst.tmp" "$dst"
}

# start_dir DIR: a new DIR.tmp to build DIR in, marked (.partial) as this script's, so that a later run may remove
# it. No script deletes what it did not create: a DIR, or a DIR.tmp without the mark, is refused, never removed.
start_dir() {
  local dir="$1"
  [[ ! -e "$dir" ]] || die "$dir exists but was not made by this script: move it away, or choose another --out-dir"
  if [[ -e "$dir.tmp" ]]; then
    [[ -f "$dir.tmp/.partial" ]] ||
      die "$dir.tmp exists but was not left by this script: move it away, or choose another --out-dir"
    rm -rf "$dir.tmp"
  fi
  mkdir -p "$dir.tmp" && touch "$dir.tmp/.partial"
}

# finish_dir DIR: the complete DIR.tmp becomes DIR.
finish_dir() { rm -f "$1.tmp/.partial"; mv "$1.tmp" "$1"; }

# binarize TEXT_DIR BIN_DIR SRC TGT TRAIN VALID TEST WORKERS: fairseq-preprocess into BIN_DIR (built in BIN_DIR.tmp).
binarize() {
  local text="$1" bin="$2" src="$3" tgt="$4" train="$5" valid="$6" test="$7" workers="$8"
  [[ -f "$bin/.done" ]] && return 0
  start_dir "$bin"
  python3 -m fairseq_cli.preprocess --source-lang "$src" --target-lang "$tgt" \
    --trainpref "$text/$train" --validpref "$text/$valid" --testpref "$text/$test" \
    --destdir "$bin.tmp" --joined-dictionary --workers "$workers" >&2 || { rm -rf "$bin.tmp"; die "fairseq-preprocess failed"; }
  touch "$bin.tmp/.done"
  finish_dir "$bin"
}

# fetch_wmt14 RAW: download the official WMT14 En-De archives and extract NAME.en / NAME.de into RAW.
fetch_wmt14() {
  local raw="$1" dl="$1/download"
  mkdir -p "$dl"
  local -A archives=(
    [training-parallel-europarl-v7.tgz]="https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz"
    [training-parallel-commoncrawl.tgz]="https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz"
    [training-parallel-nc-v9.tgz]="https://www.statmt.org/wmt14/training-parallel-nc-v9.tgz"
    [dev.tgz]="https://www.statmt.org/wmt14/dev.tgz"
    [test-full.tgz]="https://www.statmt.org/wmt14/test-full.tgz"
  )
  local name
  for name in "${!archives[@]}"; do
    [[ -s "$dl/$name" ]] && tar -tzf "$dl/$name" >/dev/null 2>&1 && continue
    fetch_url "${archives[$name]}" "$dl/$name" ""
    tar -tzf "$dl/$name" >/dev/null || die "$dl/$name is not a valid archive: delete it and re-run"
  done
  local lang
  for lang in en de; do
    [[ -s "$raw/europarl-v7.de-en.$lang" ]] || atomic "$raw/europarl-v7.de-en.$lang" tar -xzOf "$dl/training-parallel-europarl-v7.tgz" "training/europarl-v7.de-en.$lang"
    [[ -s "$raw/commoncrawl.de-en.$lang" ]] || atomic "$raw/commoncrawl.de-en.$lang" tar -xzOf "$dl/training-parallel-commoncrawl.tgz" "commoncrawl.de-en.$lang"
    [[ -s "$raw/news-commentary-v9.de-en.$lang" ]] || atomic "$raw/news-commentary-v9.de-en.$lang" tar -xzOf "$dl/training-parallel-nc-v9.tgz" "training/news-commentary-v9.de-en.$lang"
    [[ -s "$raw/newstest2013.$lang" ]] || atomic "$raw/newstest2013.$lang" tar -xzOf "$dl/dev.tgz" "dev/newstest2013.$lang"
  done
  [[ -s "$raw/newstest2014.en" ]] || atomic "$raw/newstest2014.en" sgm_text "$dl/test-full.tgz" test-full/newstest2014-deen-src.en.sgm
  [[ -s "$raw/newstest2014.de" ]] || atomic "$raw/newstest2014.de" sgm_text "$dl/test-full.tgz" test-full/newstest2014-deen-ref.de.sgm
}

# sgm_text ARCHIVE MEMBER: the <seg> texts of an SGML test file inside a tar archive, one per line.
sgm_text() {
  tar -xzOf "$1" "$2" | python3 -c "
import html, re, sys
for line in sys.stdin:
    m = re.search(r'<seg[^>]*>(.*)</seg>', line)
    if m:
        print(html.unescape(m.group(1)).strip())"
}

# parse_prep_args "$@": the options every data-prep script takes; sets RAW_DIR, OUT_DIR, VOCAB_SIZE, WORKERS,
# SAMPLE (defaults come from the script). --help prints the script's header comment.
parse_prep_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --raw-dir) RAW_DIR="$2"; shift 2 ;;
      --out-dir) OUT_DIR="$2"; shift 2 ;;
      --vocab-size) VOCAB_SIZE="$2"; shift 2 ;;
      --workers) WORKERS="$2"; shift 2 ;;
      --sample) SAMPLE="$2"; shift 2 ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
  done
}

# sentencepiece_splits TEXT_DIR SPM_DIR VOCAB_SIZE SAMPLE "SPLITS" "LANGS": train one joint sentencepiece model on
# TEXT_DIR/train.{LANGS} (SAMPLE sentences), then encode TEXT_DIR/SPLIT.LANG into SPM_DIR/SPLIT.LANG; finished
# outputs are kept (each is written atomically by the tool).
sentencepiece_splits() {
  local text="$1" spm_dir="$2" vocab="$3" sample="$4" split lang inputs=()
  read -r -a splits <<<"$5"; read -r -a langs <<<"$6"
  for lang in "${langs[@]}"; do inputs+=("$text/${splits[0]}.$lang"); done
  step "joint sentencepiece model (vocab $vocab, sample $sample sentences)"
  python3 "$TOOLS/sentencepiece_tool.py" train --input "${inputs[@]}" \
    --model-prefix "$spm_dir/spm" --vocab-size "$vocab" --sample-size "$sample"
  step "encode ${splits[*]}"
  for split in "${splits[@]}"; do
    for lang in "${langs[@]}"; do
      [[ -s "$spm_dir/$split.$lang" ]] || python3 "$TOOLS/sentencepiece_tool.py" encode --model "$spm_dir/spm.model" \
        --input "$text/$split.$lang" --output "$spm_dir/$split.$lang"
    done
  done
}
