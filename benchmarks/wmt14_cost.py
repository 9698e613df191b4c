"""What a full WMT14 En-De run of the recipe costs, on paper, from measured throughput.

Reads `benchmarks/multi_gpu.py scaling --out scaling.json` (updates per second of each config on each GPU count,
at the recipe's effective batch) and prints, per config and GPU count, the wall-clock hours and GPU-hours of
--updates updates (the recipe's MAX_UPDATE, 100,000). GPU counts that were not measured (--extrapolate, e.g. 8)
are extrapolated from the largest measured one at its parallel efficiency, and marked so.

Caveat: the throughput is measured on the data given to `scaling` (Multi30k if WMT14 is not at hand); WMT14's
longer sentences fill a batch with fewer, longer rows, so its updates per second differ. State the data next
to the numbers.

    python benchmarks/wmt14_cost.py results/multi_gpu/scaling.json [--updates 100000] [--extrapolate 8]
"""

import argparse
import json
import sys


def cost_rows(scaling, updates, extrapolate=()):
    """[{config, gpus, hours, gpu_hours, measured}] from a scaling result's rows (each with config, gpus, ups)."""
    rows, by_config = [], {}
    for r in scaling["rows"]:
        if not r.get("ups"):
            raise ValueError(f"{r['config']} on {r['gpus']} GPU(s): no updates/s in the scaling result (re-run it)")
        by_config.setdefault(r["config"], []).append(r)
    for config, measured in by_config.items():
        measured.sort(key=lambda r: r["gpus"])
        one = next((r["ups"] for r in measured if r["gpus"] == 1), None)
        for r in measured:
            hours = updates / r["ups"] / 3600
            rows.append({"config": config, "gpus": r["gpus"], "hours": hours, "gpu_hours": hours * r["gpus"],
                         "measured": True})  # fmt: skip
        largest = measured[-1]
        for k in sorted(set(extrapolate) - {r["gpus"] for r in measured}):
            if one is None:
                raise ValueError(f"{config}: extrapolating needs the 1-GPU row")
            efficiency = largest["ups"] / one / largest["gpus"]
            hours = updates / (one * k * efficiency) / 3600
            rows.append({"config": config, "gpus": k, "hours": hours, "gpu_hours": hours * k, "measured": False,
                         "efficiency_assumed": efficiency})  # fmt: skip
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scaling", help="JSON written by benchmarks/multi_gpu.py scaling --out")
    p.add_argument("--updates", type=int, default=100_000, help="the recipe's MAX_UPDATE")
    p.add_argument("--extrapolate", default="8", help="GPU counts to extrapolate, comma-separated ('' for none)")
    args = p.parse_args(argv)
    with open(args.scaling) as f:
        scaling = json.load(f)
    extrapolate = [int(k) for k in args.extrapolate.split(",") if k]
    try:
        rows = cost_rows(scaling, args.updates, extrapolate)
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(f"{args.updates:,} updates; throughput from {args.scaling}")
    print("| config | GPUs | wall-clock hours | GPU-hours | |\n|---|---|---|---|---|")
    for r in rows:
        note = "measured" if r["measured"] else f"extrapolated at {r['efficiency_assumed']:.0%} efficiency"
        print(f"| {r['config']} | {r['gpus']} | {r['hours']:.1f} | {r['gpu_hours']:.1f} | {note} |")


if __name__ == "__main__":
    main()
