"""Training throughput of transformer_collab against fairseq's transformer, measured in the same run.

Runs ``fairseq-train`` once per configuration and repeat, on the same binarized data with the same flags,
the configurations interleaved (A B C, A B C, ...) so that a machine's drift between repeats hits all of them,
and reports target words/s and peak GPU memory (torch.cuda.max_memory_allocated at exit; max_memory_reserved, which
also holds CUDA graphs' memory pools, is kept as peak_gpu_reserved_bytes) as ratios to the first
configuration (the baseline). A run's words/s is the median of fairseq's ``wps`` over its logging intervals after
the warm-up updates (short intervals: on a small corpus an epoch boundary stalls one interval, and the median
leaves it out; the upper / lower quartile of those intervals, the largest over a configuration's runs, is printed
as the interval spread: near 1 on a quiet machine); a configuration's is the median over repeats, and the ratio's
spread is the range of the
per-repeat ratios (each run against the baseline's run of the same repeat).
``--collab-attention-kernel mixgemm`` in a config's flags picks a kernel.

    python benchmarks/train_throughput.py DATA_BIN --repeats 3 --out results/throughput_wmt_en_de.json \
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

from collab_fairseq.attention_backends import default_cudnn_attention
from collab_fairseq.files import write_text_atomically

COMMON = (
    "--share-all-embeddings --optimizer adam --adam-betas (0.9,0.98) --lr 7e-4 --lr-scheduler inverse_sqrt "
    "--warmup-updates 4000 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --dropout 0.1 "
    "--fp16 --max-tokens 16384 --seed 1 --disable-validation --no-save --log-format simple --no-progress-bar"
)
WPS = re.compile(r"wps=([\d.]+).*num_updates=(\d+)")
PEAK = re.compile(r"PEAK_CUDA_BYTES (\d+) (\d+)")
# fairseq-train in this process, printing the peak GPU memory when it exits
WRAPPER = (
    "import atexit, runpy, sys, torch; "
    "atexit.register(lambda: print('PEAK_CUDA_BYTES', "
    "torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0, "
    "torch.cuda.max_memory_reserved() if torch.cuda.is_available() else 0)); "
    "sys.argv = ['fairseq-train'] + sys.argv[1:]; runpy.run_module('fairseq_cli.train', run_name='__main__')"
)


def measure(data, name, flags, max_update, warmup, user_dir, log_interval):
    cmd = [sys.executable, "-c", WRAPPER, data, "--user-dir", user_dir, "--max-update", str(max_update)]
    cmd += ["--log-interval", str(log_interval)]
    start, load_before = time.time(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as save_dir:  # --no-save still makes the folder
        cmd += ["--save-dir", save_dir] + shlex.split(COMMON) + shlex.split(flags)
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
        "peak_gpu_reserved_bytes": int(peak.group(2)) if peak else None,
        "name": name,
        "flags": flags,
        "wps_median": statistics.median(samples),
        # upper / lower quartile of the intervals' words/s: near 1 on a quiet machine
        "wps_interval_spread": round(quartile_ratio(samples), 3) if len(samples) > 1 else None,
        "wps_samples": samples,
        "params": int(params.group(1).replace(",", "")) if params else None,
        "wall_s": round(time.time() - start, 1),
        # the host's 1-minute load average before and after: other work on a shared host shows here
        "host_load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "host_cpus": os.cpu_count(),
    }


def main():
    default_cudnn_attention("0")  # measured with cuDNN's attention off, as the recipes train
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--config", action="append", required=True, help="NAME:FLAGS; the first is the baseline")
    parser.add_argument("--max-update", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100, help="updates excluded from the measurement")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, interleaved")
    parser.add_argument("--log-interval", type=int, default=10, help="updates per wps sample")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    user_dir = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collab_fairseq"))
    configs = [spec.partition(":")[::2] for spec in args.config]
    runs = {name: [] for name, _ in configs}
    common = {"common_flags": COMMON, "max_update": args.max_update, "warmup": args.warmup}
    common.update(log_interval=args.log_interval, repeats=args.repeats)
    for repeat in range(args.repeats):
        for name, flags in configs:
            run = measure(args.data, name, flags, args.max_update, args.warmup, user_dir, args.log_interval)
            runs[name].append(run)
            print(f"repeat {repeat + 1} {name}: {run['wps_median']:.0f} wps", file=sys.stderr, flush=True)
        rows = summarize(configs, {name: own for name, own in runs.items() if own})
        if args.out:  # after every repeat: a run cut short keeps the repeats it finished
            write_text_atomically(args.out, json.dumps({"rows": rows, **common, "repeats_done": repeat + 1}, indent=1))
    print(f"{args.repeats} repeat(s); words/s: median over repeats; ratio: median (range) of the per-repeat ratios")
    print("| config | params | target words/s | speed ratio | peak GPU memory GiB | memory ratio | interval spread |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        gib = (row["peak_gpu_bytes"] or 0) / 2**30
        spread = f" ({min(row['ratios']):.3f}-{max(row['ratios']):.3f})" if len(row["ratios"]) > 1 else ""
        print(
            f"| {row['name']} | {row['params']:,} | {row['wps_median']:,.0f} | {row['ratio']:.3f}{spread} "
            f"| {gib:.2f} | {row.get('memory_ratio', float('nan')):.3f} | {row['wps_interval_spread']:.2f} |"
        )


def quartile_ratio(samples) -> float:
    lower, _, upper = statistics.quantiles(samples, n=4)
    return upper / lower


def summarize(configs, runs):
    """One row per configuration: the median words/s over its runs, the per-repeat ratios to the baseline (the
    first configuration's run of the same repeat), their median, and the peak memory ratio (largest peak)."""
    base_runs = runs[configs[0][0]]
    rows = []
    for name, flags in configs:
        if name not in runs:
            continue
        own = runs[name]
        ratios = [run["wps_median"] / base["wps_median"] for run, base in zip(own, base_runs)]
        peaks = [run["peak_gpu_bytes"] for run in own if run["peak_gpu_bytes"]]
        row = {
            "name": name,
            "flags": flags,
            "params": own[0]["params"],
            "wps_median": statistics.median(run["wps_median"] for run in own),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "peak_gpu_bytes": max(peaks) if peaks else None,
            "peak_gpu_reserved_bytes": max((run.get("peak_gpu_reserved_bytes") or 0 for run in own), default=0),
            "wps_interval_spread": max((run.get("wps_interval_spread") or 1.0 for run in own), default=1.0),
            "runs": own,
        }
        rows.append(row)
    base_peak = rows[0]["peak_gpu_bytes"]
    for row in rows:
        if base_peak and row["peak_gpu_bytes"]:
            row["memory_ratio"] = row["peak_gpu_bytes"] / base_peak
    return rows


if __name__ == "__main__":
    main()
