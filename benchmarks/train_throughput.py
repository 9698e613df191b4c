"""Training throughput of transformer_collab against fairseq's transformer, measured side by side.

Runs ``fairseq-train`` once per configuration, one after the other, on the same binarized data with the
same flags, and reports target words/s (fairseq's ``wps``, median over the logging intervals after the
warm-up updates) and peak GPU memory (torch.cuda.max_memory_allocated at exit) as ratios to the first
configuration (the baseline). ``--collab-attention-kernel sdpa`` in a config's flags picks another kernel.

    python benchmarks/train_throughput.py DATA_BIN --out results/throughput_wmt_en_de.json \
        --config "transformer:--arch transformer_wmt_en_de" \
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

COMMON = (
    "--share-all-embeddings --optimizer adam --adam-betas (0.9,0.98) --lr 7e-4 --lr-scheduler inverse_sqrt "
    "--warmup-updates 4000 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --dropout 0.1 "
    "--fp16 --max-tokens 16384 --seed 1 --disable-validation --no-save --log-format simple --log-interval 50 "
    "--no-progress-bar"
)
WPS = re.compile(r"wps=([\d.]+).*num_updates=(\d+)")
PEAK = re.compile(r"PEAK_CUDA_BYTES (\d+)")
# fairseq-train in this process, printing the peak GPU memory when it exits
WRAPPER = (
    "import atexit, runpy, sys, torch; "
    "atexit.register(lambda: print('PEAK_CUDA_BYTES', "
    "torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)); "
    "sys.argv = ['fairseq-train'] + sys.argv[1:]; runpy.run_module('fairseq_cli.train', run_name='__main__')"
)


def measure(data, name, flags, max_update, warmup, user_dir):
    cmd = [sys.executable, "-c", WRAPPER, data, "--user-dir", user_dir, "--max-update", str(max_update)]
    cmd += shlex.split(COMMON) + shlex.split(flags)
    start = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}")
    samples = [float(m.group(1)) for m in WPS.finditer(proc.stdout) if int(m.group(2)) > warmup]
    if not samples:
        raise RuntimeError(f"{name}: no wps lines after update {warmup}; raise --max-update")
    params = re.search(r"num\. shared model params: ([\d,]+)", proc.stdout)
    peak = PEAK.search(proc.stdout)
    return {
        "peak_gpu_bytes": int(peak.group(1)) if peak else None,
        "name": name,
        "flags": flags,
        "wps_median": statistics.median(samples),
        "wps_samples": samples,
        "params": int(params.group(1).replace(",", "")) if params else None,
        "wall_s": round(time.time() - start, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--config", action="append", required=True, help="NAME:FLAGS; the first is the baseline")
    parser.add_argument("--max-update", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100, help="updates excluded from the measurement")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    user_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collab_fairseq")
    rows = []
    for spec in args.config:
        name, _, flags = spec.partition(":")
        rows.append(measure(args.data, name, flags, args.max_update, args.warmup, os.path.abspath(user_dir)))
        print(f"{name}: {rows[-1]['wps_median']:.0f} wps", file=sys.stderr, flush=True)
    base = rows[0]["wps_median"]
    for row in rows:
        row["ratio"] = row["wps_median"] / base
        if rows[0]["peak_gpu_bytes"] and row["peak_gpu_bytes"]:
            row["memory_ratio"] = row["peak_gpu_bytes"] / rows[0]["peak_gpu_bytes"]
    if args.out:
        tmp = tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(args.out)), delete=False)
        json.dump({"rows": rows, "common_flags": COMMON, "max_update": args.max_update}, tmp, indent=1)
        tmp.close()
        os.replace(tmp.name, args.out)
    print("| config | params | target words/s | speed ratio | peak GPU memory GiB | memory ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        gib = (row["peak_gpu_bytes"] or 0) / 2**30
        print(
            f"| {row['name']} | {row['params']:,} | {row['wps_median']:,.0f} | {row['ratio']:.3f} "
            f"| {gib:.2f} | {row.get('memory_ratio', float('nan')):.3f} |"
        )


if __name__ == "__main__":
    main()
