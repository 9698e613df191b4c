"""The fp16 loss scale of fairseq-train runs, read from their logs: initial scale, overflows, lowest scale.

fairseq's dynamic loss scaling halves the scale at every overflowing update (and skips that update); within the
1800 updates of a Multi30k run it never grows back (its window is 2**14 updates). A run of several phases (the warm
start: transformer phase, then the collaborative phase) is given as its logs in order, comma-separated.

    python benchmarks/fp16_loss_scale.py --out results/performance/loss_scale.json \\
        transformer_s1:RUNS/transformer_s1/train.log \\
        collab_dk128_warm_start_s1:RUNS/collab_dk128_s1/warm_start/train.log,RUNS/collab_dk128_s1/train.log
"""

import argparse
import json
import re
import sys

INIT = re.compile(r"fp16_init_scale=(\d+)")
OVERFLOW = re.compile(r"gradient overflow detected, ignoring gradient, setting loss scale to: ([\d.e-]+)")
LOGGED = re.compile(r"(?<!\w)loss_scale=([\d.e-]+)")  # not min_loss_scale= of the arguments
BEST = re.compile(r"best_loss ([\d.]+)")


def read_log(text: str) -> dict:
    """One fairseq-train log: its initial scale, the scales after each overflow, the lowest scale, the best
    validation loss (None where the log has none)."""
    init = INIT.search(text)
    if init is None:
        raise ValueError("no fp16_init_scale in the log: not an --fp16 fairseq-train log")
    after_overflow = [float(x) for x in OVERFLOW.findall(text)]
    scales = [float(init.group(1))] + after_overflow + [float(x) for x in LOGGED.findall(text)]
    best = [float(x) for x in BEST.findall(text)]
    return {
        "init_scale": float(init.group(1)),
        "overflows": len(after_overflow),
        "scales_after_overflow": after_overflow,
        "min_scale": min(scales),
        "best_valid_loss": min(best) if best else None,
    }


def read_run(paths) -> dict:
    phases = []
    for path in paths:
        with open(path) as f:
            phases.append({"log": path, **read_log(f.read())})
    return {
        "phases": phases,
        "overflows": sum(p["overflows"] for p in phases),
        "min_scale": min(p["min_scale"] for p in phases),
        "best_valid_loss": phases[-1]["best_valid_loss"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME:LOG[,LOG...] (a run's phases in order)")
    parser.add_argument("--out", help="write the runs as JSON here")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, logs = spec.partition(":")
        if not sep or not logs:
            print(f"error: {spec!r} is not NAME:LOG[,LOG...]", file=sys.stderr)
            return 2
        try:
            runs[name] = read_run(logs.split(","))
        except (OSError, ValueError) as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 2
    if args.out:
        with open(args.out, "w") as f:
            json.dump(runs, f, indent=1)
    print("| run | phase | initial scale | overflows (scale after each) | lowest scale | best valid loss |")
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        for i, p in enumerate(run["phases"], 1):
            after = ", ".join(f"{s:g}" for s in p["scales_after_overflow"])
            best = "-" if p["best_valid_loss"] is None else f"{p['best_valid_loss']:.3f}"
            print(
                f"| {name} | {i}/{len(run['phases'])} | {p['init_scale']:g} | {p['overflows']}"
                f"{f' ({after})' if after else ''} | {p['min_scale']:g} | {best} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
