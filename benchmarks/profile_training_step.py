"""Where a training step's time goes: fairseq's transformer against transformer_collab, kernel by kernel.

Each configuration is built with fairseq's own task and model code (a synthetic joined dictionary of
--vocab entries), converted to fp16 as ``--fp16`` does, and runs --steps forward + backward passes of
label-smoothed cross-entropy on the same random batches of --sentences x --tokens (lengths drawn between
half and all of --tokens, so there is padding) under torch.profiler. Printed per configuration: device time
per step and its split into kernel groups (GEMM, fused attention, softmax, elementwise/copies, reductions,
other), the wall time per step of the same steps run without the profiler (above the device time: the GPU waits
for the host; every configuration is built first, then timed in --wall-rounds rounds in which they take turns,
so that drift falls on all alike: median, and the per-round ratio to the first configuration with its range),
then each configuration's top kernels, and against the first configuration the ops whose device
time and whose host time (aten ops' self CPU time: dispatch and launch) differ most. The optimizer step is left
out (its cost follows the parameter count). On a machine without CUDA it profiles the CPU in fp32 (a smoke run,
not a measurement).

    python benchmarks/profile_training_step.py --out results/performance/profile_step.json \\
        --config "transformer_wmt_en_de:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import gc
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from typing import List

import torch
from model_steps import batches, build, for_each_config, in_turns, step_parser
from torch.profiler import ProfilerActivity, profile

from collab_fairseq.attention_backends import default_cudnn_attention

BACKWARD_NODE = "autograd::engine::evaluate_function: "
GROUPS = [  # first match wins; kernel names as CUDA and torch's CPU ops report them
    (
        "gemm",
        re.compile(r"gemm|cutlass|cublas|sm\d+_xmma|ampere_|hopper_|nvjet|aten::(mm|bmm|addmm|baddbmm|matmul)", re.I),
    ),
    ("fused attention", re.compile(r"flash|fmha|efficient_attention|scaled_dot_product", re.I)),
    ("softmax", re.compile(r"softmax", re.I)),
    ("reductions", re.compile(r"reduce|norm|sum|mean", re.I)),
    (
        "elementwise/copies",
        re.compile(r"elementwise|vectorized|copy|cat|fill|masked|mul|add|where|index|dropout|bernoulli", re.I),
    ),
]


def group_of(name):
    return next((group for group, pattern in GROUPS if pattern.search(name)), "other")


def device_time(prof, steps, device):
    """({kernel: ms per step}, {launching op or backward node: ms per step}, {aten op: host ms per step}) from a
    torch.profiler run of ``steps`` steps (on the CPU: aten ops' self time as kernels, and no launchers). The host
    time of an op is its self CPU time: dispatch and kernel launch on a GPU (inflated by the profiler alike for
    every configuration), the op itself on the CPU."""
    kernels, launchers, host = defaultdict(float), defaultdict(float), defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") and event.device_type != torch.autograd.DeviceType.CUDA:
            host[event.key] += event.self_cpu_time_total
        if device.type == "cuda":
            us = getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0))
            if us > 0 and event.device_type == torch.autograd.DeviceType.CUDA:
                kernels[event.key] += us
            elif us > 0:  # a CPU-side op (aten::mul, ...): the device time of the kernels it launched itself
                launchers[event.key] += us
            backward = event.key.startswith(BACKWARD_NODE) and event.device_type != torch.autograd.DeviceType.CUDA
            if backward and getattr(event, "device_time_total", 0) > 0:  # inclusive: what that backward node ran
                launchers[event.key.replace(BACKWARD_NODE, "backward: ")] += event.device_time_total
        elif event.key.startswith("aten::") and event.self_cpu_time_total > 0:
            kernels[event.key] += event.self_cpu_time_total
    per_step_ms = {k: us / 1000 / steps for k, us in kernels.items()}
    ops_ms = {k: us / 1000 / steps for k, us in sorted(launchers.items(), key=lambda kv: -kv[1])}
    host_ms = {k: us / 1000 / steps for k, us in sorted(host.items(), key=lambda kv: -kv[1])}
    return per_step_ms, ops_ms, host_ms


def profiled_steps(step, samples, device, top, wall_rounds_ms=None) -> dict:
    """step(sample) over samples, timed without the profiler (wall; or the median of ``wall_rounds_ms``, timed
    by the caller), then again under torch.profiler: device time per step, its kernel groups, top kernels, and
    the device time per launching op."""
    wall_ms = statistics.median(wall_rounds_ms) if wall_rounds_ms else wall_ms_per_step(step, samples, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        profiled_wall_ms = wall_ms_per_step(step, samples, device)
    per_step_ms, ops_ms, host_ms = device_time(prof, len(samples), device)
    groups = defaultdict(float)
    for kernel, ms in per_step_ms.items():
        groups[group_of(kernel)] += ms
    return {
        "ms_per_step": sum(per_step_ms.values()),
        # the same steps without the profiler, timed on the host with one synchronisation at the end: when it is
        # well above ms_per_step the GPU waits for the host (Python, launches), and kernel speed-ups do not show
        "wall_ms_per_step": wall_ms,
        "wall_ms_rounds": list(wall_rounds_ms or [wall_ms]),
        "groups_ms": dict(groups),
        "top_kernels_ms": sorted(per_step_ms.items(), key=lambda kv: -kv[1])[:top],
        "kernels_ms": dict(sorted(per_step_ms.items(), key=lambda kv: -kv[1])),
        # which op launched the time: aten ops (forward and backward together) and, inclusive, each autograd
        # backward node ("backward: MulBackward0"), so a kernel's time can be traced to the layer's code
        "ops_ms": ops_ms,
        # host side: aten ops' self CPU time per step (the rest of the host's time is Python and the autograd
        # engine between ops); where wall_ms_per_step is well above ms_per_step, host time sets the step's pace
        "host_aten_ms_per_step": sum(host_ms.values()),
        # the profiled steps' wall time: minus host_aten_ms_per_step, the host's time outside aten ops (Python,
        # the autograd engine, waiting for the GPU), both under the profiler's overhead
        "profiled_wall_ms_per_step": profiled_wall_ms,
        "host_ops_ms": host_ms,
    }


def prepare_config(name, flags, data_dir, args, device):
    """(name, flags, model, step, measured samples): the model built (fp16 on a GPU, as --fp16) and warmed up."""
    model, criterion, task = build(flags, data_dir)
    model = model.to(device).train()
    if device.type == "cuda":
        model = model.half()
    samples = batches(task, args.warmup + args.steps, args.sentences, args.tokens, device)

    def step(sample):
        model.zero_grad(set_to_none=True)
        loss, _, _ = criterion(model, sample)
        loss.backward()

    for sample in samples[: args.warmup]:
        step(sample)
    return name, flags, model, step, samples[args.warmup :]


def interleaved_wall_ms(prepared, rounds, device) -> List[List[float]]:
    """Wall ms per step of every prepared configuration (:func:`prepare_config`) in each of ``rounds`` rounds."""

    def timer(step, samples):
        def wall():
            gc.collect()
            return wall_ms_per_step(step, samples, device)

        return wall

    return in_turns([timer(step, samples) for _, _, _, step, samples in prepared], rounds)


def wall_ratios(row, baseline) -> List[float]:
    """Per round, the configuration's wall time over the baseline's (rounds are paired: they ran back to back)."""
    return [ours / theirs for ours, theirs in zip(row["wall_ms_rounds"], baseline["wall_ms_rounds"])]


def wall_ms_per_step(step, samples, device) -> float:
    """Milliseconds of wall time per step(sample) over samples, synchronised before and after (not per step)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for sample in samples:
        step(sample)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / len(samples)


def main():
    default_cudnn_attention("0")  # measured with cuDNN's attention off, as the recipes train
    p = step_parser(__doc__, sentences=128, top=12)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--wall-rounds", type=int, default=5, help="rounds of unprofiled wall timing, the configurations taking turns"
    )
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prepared = for_each_config(args, lambda name, flags, data_dir: prepare_config(name, flags, data_dir, args, device))
    walls = interleaved_wall_ms(prepared, args.wall_rounds, device)
    rows = []
    for (name, flags, model, step, samples), wall in zip(prepared, walls):
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            {"config": name, "flags": flags, "params": params, **profiled_steps(step, samples, device, args.top, wall)}
        )
        print(f"{name}: {rows[-1]['ms_per_step']:.2f} ms/step", file=sys.stderr, flush=True)
    base = rows[0]["ms_per_step"]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__,
                    "sentences": args.sentences,
                    "tokens": args.tokens,
                    "steps": args.steps,
                    "wall_rounds": args.wall_rounds,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    names = [g for g, _ in GROUPS] + ["other"]
    print(f"wall: median over {args.wall_rounds} rounds; vs baseline: median (range) of the per-round ratios")
    print(f"| config | ms/step | vs baseline | wall ms/step | wall vs baseline | {' | '.join(names)} |")
    print("|---" * (len(names) + 5) + "|")
    for r in rows:
        cells = " | ".join(f"{r['groups_ms'].get(g, 0.0):.2f}" for g in names)
        ratios = wall_ratios(r, rows[0])
        wall = f"{r['wall_ms_per_step']:.2f} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        print(f"| {r['config']} | {r['ms_per_step']:.2f} | {r['ms_per_step'] / base:.3f} | {wall} | {cells} |")
    for r in rows:
        print(f"\n{r['config']}: top kernels (ms/step)")
        for kernel, ms in r["top_kernels_ms"]:
            print(f"  {ms:8.3f}  {kernel[:110]}")
    for r in rows[1:]:
        print(f"\n{r['config']} against {rows[0]['config']}: ops whose device time differs most (ms/step)")
        for op, ours, theirs in op_differences(r["ops_ms"], rows[0]["ops_ms"])[: args.top]:
            print(f"  {ours - theirs:+8.3f}  ({ours:.3f} vs {theirs:.3f})  {op[:90]}")
        outside = [x["profiled_wall_ms_per_step"] - x["host_aten_ms_per_step"] for x in (r, rows[0])]
        print(
            f"\n{r['config']} against {rows[0]['config']}, host time per step under the profiler: in aten ops "
            f"{r['host_aten_ms_per_step']:.2f} vs {rows[0]['host_aten_ms_per_step']:.2f} ms, outside them (Python, "
            f"autograd engine, waits) {outside[0]:.2f} vs {outside[1]:.2f} ms; ops whose host time differs most"
        )
        for op, ours, theirs in op_differences(r["host_ops_ms"], rows[0]["host_ops_ms"])[: args.top]:
            print(f"  {ours - theirs:+8.3f}  ({ours:.3f} vs {theirs:.3f})  {op[:90]}")


def op_differences(ours, baseline):
    """[(op, our ms, baseline ms)] over both configurations' ops, the largest |difference| first."""
    ops = set(ours) | set(baseline)
    rows = [(op, ours.get(op, 0.0), baseline.get(op, 0.0)) for op in ops]
    return sorted(rows, key=lambda r: -abs(r[1] - r[2]))


if __name__ == "__main__":
    main()
