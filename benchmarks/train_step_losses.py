"""Per-update training losses of several fairseq-train runs, against the first run's: does a training step compute
what another does?

Each configuration is fairseq-train flags added to the same command (same data, seed, batches); every update's loss
is read from fairseq's log (``--log-interval 1``). Reported per configuration: the largest and the mean absolute
difference of its losses from the first configuration's over the first --updates updates. Two runs of the same
configuration give the run-to-run noise to compare with (on a GPU, fp16 and atomics make eager runs differ).

    python benchmarks/train_step_losses.py DATA_BIN --updates 200 --out losses.json \\
        --config "eager:--task translation_fast --train-step bucketed" \\
        --config "eager_again:--task translation_fast --train-step bucketed" \\
        --config "graphs:--task translation_fast --train-step graphs"
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

from collab_fairseq.provenance import code_provenance

COMMON = (
    "--arch transformer_wmt_en_de --share-all-embeddings --optimizer adam --adam-betas (0.9,0.98) --lr 7e-4 "
    "--lr-scheduler inverse_sqrt --warmup-updates 4000 --criterion label_smoothed_cross_entropy "
    "--label-smoothing 0.1 --dropout 0.1 --fp16 --max-tokens 16384 --seed 1 --disable-validation --no-save "
    "--log-format simple --log-interval 1 --no-progress-bar"
)
STEP = re.compile(r"\| ((?:training step|fp16 optimizer): .*)")  # which step ran: fallbacks, recordings, copies
LOSS = re.compile(r"\| epoch \d+:\s+\d+ / \d+ loss=([\d.]+),.* num_updates=(\d+)")


def losses(data: str, common: str, flags: str, updates: int, user_dir: str) -> tuple:
    """The loss of each of the first ``updates`` updates of fairseq-train with ``common`` and ``flags``, and which
    training step ran: its log lines (fallbacks included) and the number of batch shapes it recorded."""
    cmd = [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", user_dir, "--max-update", str(updates)]
    with tempfile.TemporaryDirectory(prefix="train_step_losses_") as save_dir:  # --no-save still makes the folder
        cmd += ["--save-dir", save_dir] + shlex.split(common) + shlex.split(flags)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train {flags} failed:\n{proc.stdout[-3000:]}")
    by_update = {int(n): float(loss) for loss, n in LOSS.findall(proc.stdout)}
    if len(by_update) < updates:
        raise RuntimeError(f"fairseq-train {flags}: {len(by_update)} losses logged for {updates} updates")
    steps = sorted({m.strip() for m in STEP.findall(proc.stdout) if "recorded the micro-batch" not in m})
    path = {"training_step": steps, "recorded_shapes": proc.stdout.count("training step: recorded the micro-batch")}
    return [by_update[n] for n in range(1, updates + 1)], path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--config", action="append", required=True, help="NAME:FLAGS; the first is the reference")
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--common", default=COMMON, help="flags of every run (default: WMT-base, fp16)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    user_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collab_fairseq")
    runs, paths = {}, {}
    for spec in args.config:
        name, _, flags = spec.partition(":")
        runs[name], paths[name] = losses(args.data, args.common, flags, args.updates, user_dir)
    reference = next(iter(runs.values()))
    rows = []
    for name, values in runs.items():
        diffs = [abs(a - b) for a, b in zip(values, reference)]
        rows.append({"name": name, "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
                     "final_loss": values[-1], **paths[name], "losses": values})  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**code_provenance(), "common": args.common, "updates": args.updates, "rows": rows}, f, indent=1)
    print(f"| config | largest |loss - {rows[0]['name']}| | mean | loss at update {args.updates} | shapes recorded |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['max_abs_diff']:.4f} | {row['mean_abs_diff']:.4f} | {row['final_loss']:.3f} "
              f"| {row['recorded_shapes']} |")  # fmt: skip
        print(f"  {row['name']}: {'; '.join(row['training_step'])}")
    return rows


if __name__ == "__main__":
    main()
