"""Where a fairseq-train update reads tensor values on the host (each read is a host sync on CUDA), per model.

Runs fairseq-train in this process for --updates updates under a TorchFunctionMode that records every call that
reads a tensor's values on the host (``item``, ``tolist``, ``__bool__``, ``nonzero``, ``masked_select``, ``cpu``,
...), with the first calling frame outside torch (file:line function) and the phase it falls in: ``micro-batch``
(the task's train_step: forward and backward), ``update`` (the rest of fairseq's Trainer.train_step: gradient
norm, optimizer, logging) or ``outside`` (the data iterator, progress logging). Reported per configuration: reads
per update in each phase (median over the updates after --warmup) and the call sites with their reads per update.

On CUDA these are the host syncs of a step (torch.cuda.set_sync_debug_mode counts the same); on the CPU they are the
CPU code path's (fairseq's --fp16 overflow check, for one, runs only on CUDA). The mode sees calls that go through
torch's Python API, not reads made inside C++ operators.

    python benchmarks/host_reads.py DATA_BIN --updates 30 --warmup 10 --out reads.json \\
        --config "transformer:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import argparse
import collections
import json
import os
import shlex
import statistics
import sys

import torch
from torch.overrides import TorchFunctionMode

from collab_fairseq.provenance import code_provenance

READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select",
                   "unique", "cpu", "numpy", "_local_scalar_dense", "equal", "allclose", "any_", "all_"})  # fmt: skip
COMMON = (
    "--optimizer adam --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 100 --criterion "
    "label_smoothed_cross_entropy --label-smoothing 0.1 --dropout 0.1 --max-tokens 4096 --seed 1 "
    "--disable-validation --no-save --log-format simple --log-interval 10 --no-progress-bar --num-workers 0"
)
TORCH_DIR = os.path.dirname(torch.__file__)


class HostReads(TorchFunctionMode):
    """Records the calls that read tensor values on the host while ``counting``: (phase, name, caller, device of
    the tensor read: only reads of CUDA tensors are host syncs)."""

    def __init__(self):
        super().__init__()
        self.counting, self.phase, self.calls = False, "outside", []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.counting and name in READS:
            device = args[0].device.type if args and isinstance(args[0], torch.Tensor) else "?"
            self.calls.append((self.phase, name, caller(), device))
        return func(*args, **(kwargs or {}))


def caller() -> str:
    """file:line function of the innermost frame outside torch (and this file)."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_code.co_filename.startswith(TORCH_DIR) or frame.f_code.co_filename == __file__
    ):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    for marker in ("site-packages" + os.sep, "collab_fairseq" + os.sep):
        if marker in path:
            path = path[path.index(marker) + len(marker) :] if marker.startswith("site") else path[path.index(marker) :]
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def record(data: str, flags: str, updates: int, user_dir: str) -> list:
    """[[(phase, name, caller, device), ...] per update] of fairseq-train with ``flags``."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.fairseq_task import FairseqTask
    from fairseq.trainer import Trainer
    from fairseq_cli import train

    reads, per_update = HostReads(), []
    trainer_step, task_step = Trainer.train_step, FairseqTask.train_step

    def update(self, *args, **kwargs):
        start = len(reads.calls)
        reads.phase = "update"
        try:
            return trainer_step(self, *args, **kwargs)
        finally:
            reads.phase = "outside"
            per_update.append(start)

    def micro_batch(self, *args, **kwargs):
        reads.phase = "micro-batch"
        try:
            return task_step(self, *args, **kwargs)
        finally:
            reads.phase = "update"

    argv = [data, "--user-dir", user_dir, "--max-update", str(updates), *shlex.split(COMMON), *shlex.split(flags)]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    Trainer.train_step, FairseqTask.train_step = update, micro_batch
    try:
        with reads:
            reads.counting = True
            train.main(convert_namespace_to_omegaconf(args))
    finally:
        Trainer.train_step, FairseqTask.train_step = trainer_step, task_step
    # update i: from its start to the next one's (what happens between two updates belongs to the earlier)
    bounds = per_update + [len(reads.calls)]
    return [reads.calls[a:b] for a, b in zip(bounds, bounds[1:])]


def summarize(updates: list, warmup: int) -> dict:
    steady = updates[warmup:] or updates
    phases = ("micro-batch", "update", "outside")
    per_phase = {p: statistics.median(sum(1 for call in u if call[0] == p) for u in steady) for p in phases}
    sites = collections.Counter((c[0], f"{c[1]} at {c[2]}", c[3]) for u in steady for c in u)
    return {
        "updates_counted": len(steady),
        "reads_per_update": statistics.median(len(u) for u in steady),
        "cuda_reads_per_update": statistics.median(sum(1 for c in u if c[3] == "cuda") for u in steady),
        "reads_per_update_by_phase": per_phase,
        "sites": [{"phase": p, "site": s, "device": d, "per_update": n / len(steady)}
                  for (p, s, d), n in sites.most_common()],  # fmt: skip
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--config", action="append", required=True, help="NAME:FLAGS (fairseq-train flags)")
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out")
    args = p.parse_args(argv)
    user_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collab_fairseq")
    results = {}
    for spec in args.config:
        name, _, flags = spec.partition(":")
        results[name] = summarize(record(args.data, flags, args.updates, user_dir), args.warmup)
    if args.out:
        with open(args.out, "w") as f:
            device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
            json.dump({**code_provenance(), "device": device, "configs": results}, f, indent=1)
    print("| config | reads / update | of CUDA tensors | in micro-batches | in the rest of the update | between |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        phase = r["reads_per_update_by_phase"]
        print(f"| {name} | {r['reads_per_update']} | {r['cuda_reads_per_update']} | {phase['micro-batch']} "
              f"| {phase['update']} | {phase['outside']} |")  # fmt: skip
    for name, r in results.items():
        print(f"\n{name}: call sites (reads per update, device of the tensor read)")
        for site in r["sites"]:
            print(f"  {site['per_update']:6.2f}  {site['phase']:<11}  {site['device']:<4}  {site['site']}")
    return results


if __name__ == "__main__":
    main()
