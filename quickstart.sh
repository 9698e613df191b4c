#!/usr/bin/env bash
# Quickstart: Multi30k En-De -> a small transformer_collab (D_k=32) trained for UPDATES updates on the CPU ->
# beam-search translation of test2016 -> sacreBLEU on the real sentences.
# Hardware: CPU only (2 idle cores: ~1 min data prep, ~4 min for 600 updates, ~1 min translation); a fixed number
# of updates, so a slower machine takes longer but gets the same model.
# A finished run is not redone: running the same command again prints its result. An interrupted one resumes from
# its last checkpoint (one every 100 updates).
# usage: bash quickstart.sh [--raw-dir ../shared/data/multi30k_en_de]   (without it, Multi30k is downloaded)
#   env: UPDATES (600), KEY_DIM (32), SEED (1), WORK (work/quickstart), DATA_DIR (work/multi30k_en_de)
set -euo pipefail
cd "$(dirname "$0")"
WORK="${WORK:-work/quickstart}"
DATA_DIR="${DATA_DIR:-work/multi30k_en_de}"
UPDATES="${UPDATES:-600}"
KEY_DIM="${KEY_DIM:-32}"
SEED="${SEED:-1}"
for setting in UPDATES KEY_DIM SEED; do
  [[ "${!setting}" =~ ^[0-9]+$ ]] || { echo "error: $setting must be a whole number (got '${!setting}')" >&2; exit 2; }
done
bash data-prep/prepare-multi30k-en-de.sh --out-dir "$DATA_DIR" --workers 2 "$@"

RUN="$WORK/collab_dk${KEY_DIM}_u${UPDATES}_s$SEED"
report() {
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); bleu, signature = r["sacrebleu"], r["signature"]
print(f"test2016 sacreBLEU = {bleu}  ({signature})")' "$RUN/bleu.json"
  echo "expected with the defaults (UPDATES=600, KEY_DIM=32): 27.09-28.98, seeds 1-3 (seed 1: 28.90; README: Quickstart)"
}
if [[ -s "$RUN/bleu.json" ]]; then
  echo "[quickstart] $RUN is trained and evaluated already (move it away to train again); its result:" >&2
  report
  exit 0
fi

mkdir -p "$RUN"
if [[ ! -f "$RUN/.trained" ]]; then
  [[ -s "$RUN/checkpoint_last.pt" ]] &&
    echo "[quickstart] resuming $RUN from its last checkpoint (the model continues as if never stopped;" \
      "the printed loss averages restart there)" >&2
  echo "[quickstart] training transformer_collab (D_k=$KEY_DIM, 2+2 layers, 128 dims) for $UPDATES updates on CPU" >&2
  # progress: a Python filter reads fairseq's log line by line (Debian's awk, mawk, reads a pipe in blocks and would
  # print nothing until the end)
  PYTHONUNBUFFERED=1 python3 -m fairseq_cli.train "$DATA_DIR/bin" --user-dir collab_fairseq --arch transformer_collab \
    --collab-key-dim "$KEY_DIM" --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 \
    --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256 --encoder-attention-heads 4 --decoder-attention-heads 4 \
    --share-all-embeddings --dropout 0.1 --optimizer adam --adam-betas '(0.9, 0.98)' --lr 3e-3 \
    --lr-scheduler inverse_sqrt --warmup-updates 100 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens 4096 --max-update "$UPDATES" --save-dir "$RUN" --no-epoch-checkpoints \
    --validate-interval-updates 100 --save-interval-updates 100 --keep-interval-updates 1 \
    --log-format simple --log-interval 20 --no-progress-bar --seed "$SEED" --num-workers 0 2>&1 |
    tee -a "$RUN/train.log" |
    python3 -u -c '
import re, sys
total = int(sys.argv[1])
for line in iter(sys.stdin.readline, ""):
    fields = dict(re.findall(r"(num_updates|loss|wall)=([0-9.]+)", line))
    if "num_updates" in fields and "wall" in fields:  # a line per 20 updates: progress, loss, time left
        done = int(fields["num_updates"])
        left = float(fields["wall"]) / done * (total - done) / 60
        loss = fields.get("loss", "?")
        print(f"[quickstart] update {done}/{total}  loss {loss}  ~{left:.1f} min left")
    elif "valid on" in line and (m := re.search(r"\| loss [0-9.]+", line)):
        print("[quickstart] validation " + m.group(0)[2:])
' "$UPDATES" >&2
  touch "$RUN/.trained"
fi

echo "[quickstart] translating test2016 (1000 sentences, beam 4)" >&2
python3 -m collab_fairseq.cli.evaluate --data "$DATA_DIR/bin" --checkpoint "$RUN/checkpoint_best.pt" \
  --reference "$DATA_DIR/raw/test_2016_flickr.de" --beam 4 --generate-args "--max-len-a 1.2 --max-len-b 10" \
  --hypotheses "$RUN/hypotheses.txt" --out "$RUN/bleu.json" >/dev/null
paste -d '\n' <(head -3 "$DATA_DIR/raw/test_2016_flickr.en") <(head -3 "$RUN/hypotheses.txt") | sed 's/^/  /'
report
