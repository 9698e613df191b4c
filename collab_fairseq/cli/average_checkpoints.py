"""Average the model weights of the last N checkpoints of a run (as fairseq's scripts/average_checkpoints.py,
which the fairseq wheel does not install). Checkpoints are read with torch's safe loading.

    python -m collab_fairseq.cli.average_checkpoints --inputs RUN_DIR --num-update-checkpoints 5 --output avg.pt
"""

import argparse
import os
import re

import collab_fairseq  # noqa: F401  (allowlists fairseq's checkpoint objects for safe loading)
from collab_fairseq.files import check_writable, load_checkpoint_file, save_checkpoint_atomically


def last_checkpoints(run_dir, n, pattern=r"checkpoint_\d+_(\d+)\.pt"):
    found = sorted(
        ((int(m.group(1)), name) for name in os.listdir(run_dir) if (m := re.fullmatch(pattern, name))), reverse=True
    )
    if len(found) < n:
        raise ValueError(
            f"{run_dir} has {len(found)} update checkpoints (checkpoint_E_U.pt), need {n}: "
            "train with --save-interval-updates, or average fewer"
        )
    return [os.path.join(run_dir, name) for _, name in found[:n]]


def average(paths):
    """Mean of every floating-point tensor of the checkpoints' models; the first checkpoint's other state kept."""
    state = load_checkpoint_file(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in state["model"].items()}
    for path in paths[1:]:
        model = load_checkpoint_file(path)["model"]
        if model.keys() != total.keys():
            raise ValueError(f"{path} has other parameters than {paths[0]}: not the same model")
        for k, v in model.items():
            if v.is_floating_point():
                total[k] += v.double()
    dtype = {k: v.dtype for k, v in state["model"].items()}
    state["model"] = {k: (v / len(paths)).to(dtype[k]) if v.is_floating_point() else v for k, v in total.items()}
    return state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", required=True, help="run directory")
    parser.add_argument("--num-update-checkpoints", type=int, required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    paths = last_checkpoints(args.inputs, args.num_update_checkpoints)
    check_writable(args.output)
    save_checkpoint_atomically(average(paths), args.output)
    print(f"averaged {len(paths)} checkpoints -> {args.output}")


if __name__ == "__main__":
    main()
