"""Where a fairseq-train update reads tensor values on the host (each read is a host sync on CUDA), per model.

Runs fairseq-train in this process for --updates updates under a TorchFunctionMode that records every call that
reads a tensor's values on the host (``item``, ``tolist``, ``__bool__``, ``nonzero``, ``masked_select``, ``cpu``,
...), with the first calling frame outside torch (file:line function) and the phase it falls in: ``micro-batch``
(the task's train_step: forward and backward), ``update`` (the rest of fairseq's Trainer.train_step: gradient
norm, optimizer, logging) or ``outside`` (the data iterator, progress logging). Reported per configuration: reads
per update in each phase (median over the updates after --warmup) and the call sites with their reads per update.

Where the step's time goes (a second run of each configuration, without the recording's overhead): the wall time per
update (between the starts of two updates, median), the host's time
inside the task's train_step (forward and backward launched; on CUDA it includes waiting wherever a read syncs) and
in the rest of fairseq's update, and, with --profile-updates N on CUDA, the device's busy time per update (the
time covered by its kernels, copies and memsets under torch.profiler over N extra updates, not timed themselves,
which also give the host's time in fairseq's annotated phases: forward, backward, clip-grads (where fp16's overflow
check waits for the GPU), optimizer, ...; the profiler slows the host) and the device's idle time by what the host
was doing meanwhile (a fairseq phase, the rest of the update, or between updates: what sets the pace where the GPU
waits). Wall time near device time means the GPU sets the pace; wall time well above it means the host does.

On CUDA these are the host syncs of a step (torch.cuda.set_sync_debug_mode counts the same); on the CPU they are the
CPU code path's (fairseq's --fp16 overflow check, for one, runs only on CUDA). The mode sees calls that go through
torch's Python API, not reads made inside C++ operators.

    python benchmarks/host_reads.py DATA_BIN --updates 30 --warmup 10 --out reads.json \\
        --config "transformer:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import argparse
import collections
import contextlib
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

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
# record_function ranges of fairseq's Trainer.train_step and the tasks' train_step (host time under the profiler)
PHASES = ("forward", "backward", "bucketed micro-batch", "reduce-grads", "multiply-grads", "clip-grads", "optimizer")
UPDATE = "fairseq update"  # this script's range around each profiled Trainer.train_step


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


def record(data: str, flags: str, updates: int, user_dir: str, profile_updates: int = 0, count: bool = True) -> tuple:
    """([[(phase, name, caller, device), ...] per update], [timing per update], ``profiled_times`` of the profiled
    updates) of fairseq-train with ``flags``: ``updates`` updates, then
    ``profile_updates`` profiled ones.
    ``count``: record host reads (the mode's Python call per torch call slows the host: time a run without it)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.fairseq_task import FairseqTask
    from fairseq.trainer import Trainer
    from fairseq_cli import train

    from collab_fairseq.tasks.translation_fast import TranslationFastTask

    reads, per_update, timing = HostReads(), [], []
    tasks = (FairseqTask, TranslationFastTask)  # the fast task's train_step may call fairseq's: phases nest
    trainer_step, task_steps = Trainer.train_step, [t.__dict__["train_step"] for t in tasks]
    profile, cuda = profile_updates > 0, torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    profiler = torch.profiler.profile(activities=activities) if profile else None

    def update(self, *args, **kwargs):
        if len(per_update) == updates and profile:
            if cuda:
                torch.cuda.synchronize()
            reads.counting = False
            profiler.start()
        start, began = len(reads.calls), time.perf_counter()
        timing.append({"start": began, "micro_batch_s": 0.0})
        reads.phase = "update"
        try:
            with torch.profiler.record_function(UPDATE) if profile else contextlib.nullcontext():
                return trainer_step(self, *args, **kwargs)
        finally:
            reads.phase = "outside"
            per_update.append(start)
            timing[-1]["update_s"] = time.perf_counter() - began
            if len(per_update) == updates + profile_updates and profile:
                if cuda:
                    torch.cuda.synchronize()
                profiler.stop()

    def micro_batch_of(task_step):
        def micro_batch(self, *args, **kwargs):
            outer = reads.phase
            if outer == "micro-batch":  # nested: timed by the outer call
                return task_step(self, *args, **kwargs)
            reads.phase = "micro-batch"
            began = time.perf_counter()
            try:
                return task_step(self, *args, **kwargs)
            finally:
                reads.phase = outer
                timing[-1]["micro_batch_s"] += time.perf_counter() - began

        return micro_batch

    total = updates + (profile_updates if profile else 0)
    save_dir = tempfile.TemporaryDirectory(prefix="host_reads_")  # --no-save still makes the folder
    argv = [data, "--user-dir", user_dir, "--max-update", str(total), "--save-dir", save_dir.name,
            *shlex.split(COMMON), *shlex.split(flags)]  # fmt: skip
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    Trainer.train_step = update
    for task, step in zip(tasks, task_steps):
        task.train_step = micro_batch_of(step)
    try:
        with reads if count else contextlib.nullcontext():
            reads.counting = count
            train.main(convert_namespace_to_omegaconf(args))
    finally:
        save_dir.cleanup()
        Trainer.train_step = trainer_step
        for task, step in zip(tasks, task_steps):
            task.train_step = step
    # update i: from its start to the next one's (what happens between two updates belongs to the earlier)
    bounds = per_update[:updates] + [per_update[updates] if len(per_update) > updates else len(reads.calls)]
    profiled = profiled_times(profiler.events(), profile_updates, cuda) if profile else (None, {}, {})
    for t, nxt in zip(timing, timing[1:]):
        t["wall_s"] = nxt["start"] - t["start"]
    return [reads.calls[a:b] for a, b in zip(bounds, bounds[1:])], timing[:updates], profiled


def profiled_times(events, updates: int, cuda: bool) -> tuple:
    """(device busy s per update or None without CUDA, {phase: host s per update}, {host phase: device idle s per
    update}) from the profiler's events. Busy: the union of the device's kernel, copy and memset intervals, leaving
    out the user annotations that fairseq's record_function ranges also put on the device's timeline (each spans the
    work it encloses, so summing them counts that work again). A phase's host time: the sum of its CPU ranges. Idle:
    the device's gaps within the profiled updates, each part charged to what the host was doing meanwhile
    (``idle_by_host_phase``)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation)  # fmt: skip
    busy = []
    for start, end in spans:
        if busy and start <= busy[-1][1]:
            busy[-1][1] = max(busy[-1][1], end)
        else:
            busy.append([start, end])
    busy_us = sum(end - start for start, end in busy)
    phases, ranges = {}, []
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CPU and e.name in PHASES + (UPDATE,):
            ranges.append((e.time_range.start, e.time_range.end, e.name))
            if e.name in PHASES:
                phases[e.name] = phases.get(e.name, 0.0) + (e.time_range.end - e.time_range.start) / 1e6 / updates
    idle = idle_by_host_phase(busy, ranges) if cuda else {}
    return (busy_us / 1e6 / updates if cuda else None), phases, {k: v / 1e6 / updates for k, v in idle.items()}


def idle_by_host_phase(busy: list, ranges: list) -> dict:
    """{host phase: µs} of the device's idle time between the first and the last profiled update's bounds. ``busy``:
    the device's merged busy intervals, sorted; ``ranges``: the host's (start, end, name) ranges. Each piece of a gap
    goes to the innermost (shortest) range covering it: one of fairseq's phases, ``rest of the update`` (inside
    Trainer.train_step, no phase) or ``between updates`` (the data iterator, logging of progress)."""
    updates = [(start, end) for start, end, name in ranges if name == UPDATE]
    if not updates:
        return {}
    window = (min(s for s, _ in updates), max(e for _, e in updates))
    gaps, cursor = [], window[0]
    for start, end in busy + [[window[1], window[1]]]:
        if start > cursor:
            gaps.append((cursor, min(start, window[1])))
        cursor = max(cursor, end)
        if cursor >= window[1]:
            break
    idle = collections.Counter()
    for gap_start, gap_end in gaps:
        inside = [r for r in ranges if r[0] < gap_end and r[1] > gap_start]
        cuts = sorted({gap_start, gap_end, *(t for r in inside for t in r[:2] if gap_start < t < gap_end)})
        for a, b in zip(cuts, cuts[1:]):
            covering = [r for r in inside if r[0] <= a and r[1] >= b]
            name = min(covering, key=lambda r: r[1] - r[0])[2] if covering else "between updates"
            idle["rest of the update" if name == UPDATE else name] += b - a
    return dict(idle)


def summarize_time(timing: list, warmup: int, profiled) -> dict:
    """Medians over the updates after ``warmup``, in ms; from the profiled updates (``(device s, {phase: host s},
    {host phase: device idle s})`` per update, or None), the device's busy time, the host's time in fairseq's
    annotated phases and the device's idle time by what the host was doing."""
    device_s, phases, idle = profiled if profiled else (None, {}, {})
    steady = [t for t in timing[warmup:] if "wall_s" in t] or [t for t in timing if "wall_s" in t]

    def ms(key):
        return round(1000 * statistics.median(t[key] for t in steady), 2) if steady else None

    wall = ms("wall_s")
    update_rest = [t["update_s"] - t["micro_batch_s"] for t in steady]
    return {
        "wall_ms_per_update": wall,
        "micro_batch_host_ms_per_update": ms("micro_batch_s"),
        "rest_of_update_host_ms": round(1000 * statistics.median(update_rest), 2) if steady else None,
        "device_busy_ms_per_update": None if device_s is None else round(1000 * device_s, 2),
        "device_busy_fraction": None if device_s is None or not wall else round(1000 * device_s / wall, 3),
        "profiled_host_ms_by_phase": {name: round(1000 * seconds, 2) for name, seconds in phases.items()},
        "profiled_device_idle_ms_by_host_phase": {
            name: round(1000 * seconds, 2) for name, seconds in sorted(idle.items(), key=lambda kv: -kv[1])
        },
    }


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
    p.add_argument("--profile-updates", type=int, default=0, help="profile this many extra updates")
    p.add_argument("--out")
    args = p.parse_args(argv)
    user_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collab_fairseq")
    results = {}
    for spec in args.config:
        name, _, flags = spec.partition(":")
        calls, _, _ = record(args.data, flags, args.updates, user_dir)
        _, timing, profiled = record(args.data, flags, args.updates, user_dir, args.profile_updates, count=False)
        results[name] = {**summarize(calls, args.warmup), "time": summarize_time(timing, args.warmup, profiled)}
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
    print("\n| config | wall ms / update | host ms in train_step | host ms in the rest of the update "
          "| device busy ms / update | busy fraction |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        t = r["time"]
        print(
            f"| {name} | {t['wall_ms_per_update']} | {t['micro_batch_host_ms_per_update']} "
            f"| {t['rest_of_update_host_ms']} | {t['device_busy_ms_per_update']} | {t['device_busy_fraction']} |"
        )
    for name, r in results.items():
        if r["time"]["profiled_host_ms_by_phase"]:
            print(f"{name}: host ms per profiled update by phase: {r['time']['profiled_host_ms_by_phase']}")
        if r["time"]["profiled_device_idle_ms_by_host_phase"]:
            idle = r["time"]["profiled_device_idle_ms_by_host_phase"]
            print(f"{name}: device idle ms per profiled update, by what the host was doing: {idle}")
    for name, r in results.items():
        print(f"\n{name}: call sites (reads per update, device of the tensor read)")
        for site in r["sites"]:
            print(f"  {site['per_update']:6.2f}  {site['phase']:<11}  {site['device']:<4}  {site['site']}")
    return results


if __name__ == "__main__":
    main()
