"""Beam search speed of transformer_collab against fairseq's transformer, measured side by side.

Each configuration is built (``fairseq-train`` for one update, so both models have real weights and a
checkpoint) and then translates the same test set with ``fairseq-generate`` (beam 5, batch 128, fp16).
Every hypothesis is forced to exactly --length target tokens (min-len = max-len), so the work is the
same whatever the models learnt; the long case uses a longer forced length. Reported: sentences/s and
generated tokens/s (median of --repeats runs), as ratios to the first configuration.

A configuration is NAME:TRAIN_FLAGS, optionally followed by |GENERATE_FLAGS (e.g. ``|--task translation_fast
--generator static``, this package's beam search); configurations with the same TRAIN_FLAGS translate with the same
checkpoint. The repeats are interleaved (each repeat runs every configuration once). Where the package's search ran
over static caches, the bytes of its self-attention cache (first batch) are kept as ``cache_bytes``.

Each run translates the test set twice in one process and times the second pass (fairseq's own timer):
the first pays one-time costs of the process (e.g. CUDA kernels loaded at their first call, library handles),
which can differ between the models; in single-pass runs a cost that did not grow with the output length
carried most of the 30-token ratio (results/performance/README.md). The first pass's rate is kept as ``cold``.
The second pass starts once the first pass's data-loader worker has exited (see generate_twice): its shutdown fell
inside the timed pass in some runs and halved its rate.

    python benchmarks/beam_search.py DATA_BIN --out results/performance_beam.json \\
        --config "transformer_wmt_en_de:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128" \\
        --config "collab_dk128_static:--arch transformer_collab_wmt_en_de --collab-key-dim 128|--task translation_fast"
"""

import argparse
import gc
import json
import multiprocessing
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from collab_fairseq.attention_backends import default_cudnn_attention

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
USER_DIR = os.path.join(BENCHMARKS, "..", "collab_fairseq")
TRAIN = (
    "--share-all-embeddings --optimizer adam --lr 1e-4 --criterion label_smoothed_cross_entropy "
    "--max-tokens 4096 --max-update 1 --disable-validation --no-epoch-checkpoints --no-last-checkpoints "
    "--save-interval-updates 1 --log-format simple --no-progress-bar"
)
# fairseq's "in 0.8s" is rounded to 0.1 s (12 % at 30 tokens); its rates are of the exact time
SPEED = re.compile(
    r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in [\d.]+s \(([\d.]+) sentences/s, ([\d.]+) tokens/s\)"
)
WORKERS_LEFT = re.compile(r"workers left before the timed pass: (\d+)")
CACHE = re.compile(r"self-attention cache of the first batch \((\d+) rows x (\d+) positions\): keys (\d+) bytes, "
                   r"values (\d+) bytes")  # fmt: skip


def generate_twice(worker_wait_s=30.0):
    """fairseq-generate's main twice in this process (its arguments in sys.argv[1:]), run by translate() through
    GENERATE_TWICE. The first pass's data-loader worker outlives it for a while; where its shutdown fell inside the
    timed pass it stalled it ~5 s (torch joins a worker with a 5 s timeout), so the second pass starts only once no
    worker is left (waited for up to ``worker_wait_s``), and the number still alive then is printed (WORKERS_LEFT)."""
    from fairseq_cli.generate import cli_main

    cli_main()
    gc.collect()
    end = time.time() + worker_wait_s
    while multiprocessing.active_children() and time.time() < end:
        time.sleep(0.1)
    print(f"workers left before the timed pass: {len(multiprocessing.active_children())}", flush=True)
    cli_main()


GENERATE_TWICE = "--generate-twice"  # first argument of the child process that translates the test set twice


def run(cmd):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-3000:]}")
    return proc.stdout


def build(data, flags, save_dir, device_flags):
    run(
        [
            sys.executable,
            "-m",
            "fairseq_cli.train",
            data,
            "--user-dir",
            USER_DIR,
            "--save-dir",
            save_dir,
            *shlex.split(TRAIN),
            *device_flags,
            *shlex.split(flags),
        ]
    )
    return os.path.join(save_dir, "checkpoint_1_1.pt")


def translate(data, ckpt, length, batch, beam, subset, device_flags, generate_flags=()):
    """{"warm": (sentences/s, tokens/s) of the second pass, "cold": of the first, "cache_bytes": {...} or None} of
    one process."""
    out = run(
        [
            sys.executable,
            os.path.abspath(__file__),
            GENERATE_TWICE,
            data,
            "--user-dir",
            USER_DIR,
            "--path",
            ckpt,
            "--gen-subset",
            subset,
            "--beam",
            str(beam),
            "--batch-size",
            str(batch),
            *device_flags,
            "--quiet",
            "--min-len",
            str(length),
            "--max-len-a",
            "0",
            "--max-len-b",
            str(length),
            "--required-batch-size-multiple",
            "1",
            *generate_flags,
        ]
    )
    left = WORKERS_LEFT.search(out)
    if left is None or int(left.group(1)) != 0:
        raise RuntimeError(
            f"the first pass left data-loader workers running (they can stall the timed pass):\n{out[-2000:]}"
        )
    cache = CACHE.search(out)
    cache_bytes = dict(zip(("rows", "positions", "keys", "values"), map(int, cache.groups()))) if cache else None
    return {**dict(zip(("cold", "warm"), generation_speeds(out), strict=True)), "cache_bytes": cache_bytes}


def generation_speeds(output):
    """[(sentences/s, tokens/s)] of each "Translated ..." line fairseq-generate printed, in order."""
    return [
        (float(sentences_per_s), float(tokens_per_s)) for _, _, sentences_per_s, tokens_per_s in SPEED.findall(output)
    ]


def main():
    default_cudnn_attention("0")  # measured with cuDNN's attention off, as the recipes train
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument(
        "--config", action="append", required=True, help="NAME:TRAIN_FLAGS[|GENERATE_FLAGS]; the first is the baseline"
    )
    p.add_argument("--lengths", default="30,200", help="forced target lengths: normal and long case")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", default="test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    p.add_argument("--cpu", action="store_true", help="fp32 on the CPU (a smoke run of the script, not a benchmark)")
    args = p.parse_args()
    device_flags = ["--cpu"] if args.cpu else ["--fp16"]
    rows = []
    configs = []
    for spec in args.config:
        name, _, flags = spec.partition(":")
        train_flags, _, generate_flags = flags.partition("|")
        configs.append((name, train_flags.strip(), shlex.split(generate_flags)))
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = {}
        for train_flags in dict.fromkeys(flags for _, flags, _ in configs):
            ckpts[train_flags] = build(args.data, train_flags, os.path.join(tmp, str(len(ckpts))), device_flags)
        for length in map(int, args.lengths.split(",")):
            runs = {name: [] for name, _, _ in configs}
            for _ in range(args.repeats):
                for name, train_flags, generate_flags in configs:
                    runs[name].append(
                        translate(args.data, ckpts[train_flags], length, args.batch_size, args.beam, args.subset,
                                  device_flags, generate_flags)  # fmt: skip
                    )
            for name, _, _ in configs:
                done = runs[name]
                row = {
                    "config": name,
                    "length": length,
                    "sentences_per_s": statistics.median(r["warm"][0] for r in done),
                    "tokens_per_s": statistics.median(r["warm"][1] for r in done),
                    "sentences_per_s_runs": [r["warm"][0] for r in done],
                    "sentences_per_s_cold": statistics.median(r["cold"][0] for r in done),
                    "sentences_per_s_cold_runs": [r["cold"][0] for r in done],
                    "cache_bytes": done[0]["cache_bytes"],
                }
                rows.append(row)
                print(rows[-1], file=sys.stderr, flush=True)
    for row in rows:
        base = next(r for r in rows if r["length"] == row["length"])
        row["ratio"] = row["sentences_per_s"] / base["sentences_per_s"]
        row["ratio_cold"] = row["sentences_per_s_cold"] / base["sentences_per_s_cold"]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"beam": args.beam, "batch_size": args.batch_size, "rows": rows}, f, indent=1)
    print("| target length | config | sentences/s | tokens/s | speed ratio | first pass: sentences/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['length']} | {r['config']} | {r['sentences_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['ratio']:.3f} | {r['sentences_per_s_cold']:.1f} | {r['ratio_cold']:.3f} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == [GENERATE_TWICE]:
        del sys.argv[1]  # the rest are fairseq-generate's arguments
        generate_twice()
    else:
        main()
