"""The warm start's learning-rate schedule: the collaborative phase continues the single run's warm-up.

The warm start trains fairseq's transformer for U updates of an inverse_sqrt schedule (warm-up W, peak lr L),
converts it, and trains the collaborative model for the rest of the budget N. The second phase restarts
fairseq's scheduler, so it is given the warm-up's remaining part: it starts at lr(U) = L * U / W and reaches L
after W - U more updates, for N - U updates in all. (inverse_sqrt then decays as L * sqrt((W - U) / u) with u
counted from the restart, a little faster than one uninterrupted run: on Multi30k 0.58 L at the end instead of
0.75 L.)

Standard library only, so the recipes run it as a file without importing torch:

    python3 collab_fairseq/cli/warm_start_schedule.py --lr 1e-3 --warmup 1000 --warm-start 600 --max-update 1800
    -> WARMUP_INIT_LR=0.0006 WARMUP_UPDATES=400 MAX_UPDATE=1200
"""

import argparse
import sys
from typing import Dict


def collaborative_phase(lr: float, warmup: int, warm_start: int, max_update: int) -> Dict[str, float]:
    """fairseq-train's --warmup-init-lr, --warmup-updates and --max-update of the collaborative phase."""
    if not 0 < warm_start < min(warmup, max_update):
        raise ValueError(
            f"WARM_START={warm_start} must be in (0, min(WARMUP={warmup}, MAX_UPDATE={max_update})): the "
            "transformer phase ends inside the warm-up (e.g. WARM_START=600 with WARMUP=1000)"
        )
    return {
        "WARMUP_INIT_LR": lr * warm_start / warmup,
        "WARMUP_UPDATES": warmup - warm_start,
        "MAX_UPDATE": max_update - warm_start,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--warm-start", type=int, required=True)
    parser.add_argument("--max-update", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        phase = collaborative_phase(args.lr, args.warmup, args.warm_start, args.max_update)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join(f"{name}={value}" for name, value in phase.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
