#!/usr/bin/env bash
# The paper's grid on Multi30k En-De: train + evaluate every HEADS:KEY_DIM:SEED entry, PARALLEL at a time
# on the visible GPU(s) (Multi30k models are small: 8 fit side by side on one H100), then print the table.
# Hardware: 1 GPU, ~10 min for the default grid with PARALLEL=8 (H100/H200).
#
# usage: recipes/multi30k_en_de/sweep.sh [GRID entries...]
#   GRID default: transformer:512:1 transformer:512:2 concat:128:1 collab:512:1 collab:256:1 collab:128:1 collab:128:2 collab:64:1
#   env: PARALLEL (8), RUNS_DIR (work/multi30k_en_de/runs), TABLE (results/multi30k_en_de.md), plus train.sh's variables
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
GRID=("$@")
[[ ${#GRID[@]} -gt 0 ]] || GRID=(transformer:512:1 transformer:512:2 concat:128:1 collab:512:1 collab:256:1 collab:128:1 collab:128:2 collab:64:1)
PARALLEL="${PARALLEL:-8}"
RUNS_DIR="${RUNS_DIR:-work/multi30k_en_de/runs}"
TAG="${TAG:-}"

run_one() {  # HEADS:KEY_DIM:SEED
  IFS=: read -r heads key_dim seed <<<"$1"
  local name="${heads}_dk${key_dim}${TAG}_s${seed}"
  local dir="$RUNS_DIR/$name"
  if [[ -s "$dir/bleu.json" ]]; then echo "[sweep] $name done already" >&2; return 0; fi
  local kd=""; [[ "$heads" == transformer ]] || kd="$key_dim"
  HEADS="$heads" KEY_DIM="$kd" SEED="$seed" SAVE_DIR="$dir" "$HERE/train.sh" >/dev/null
  META="{\"run\": \"$name\", \"heads\": \"$heads\", \"key_dim\": $key_dim, \"seed\": $seed, \"tag\": \"$TAG\"}" \
    SAVE_DIR="$dir" "$HERE/evaluate.sh" >/dev/null
  echo "[sweep] $name: $(python3 -c "import json; print(json.load(open('$dir/bleu.json'))['sacrebleu'])") BLEU" >&2
}
export -f run_one; export HERE RUNS_DIR TAG
printf '%s\n' "${GRID[@]}" | xargs -P "$PARALLEL" -I{} bash -c 'run_one "$@"' _ {}
python3 -m collab_fairseq.cli.make_table "$RUNS_DIR" --out "${TABLE:-results/multi30k_en_de.md}" --plot "${PLOT:-results/multi30k_en_de.png}"
