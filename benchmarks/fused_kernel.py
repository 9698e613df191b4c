"""The fused collaborative attention kernel alone, on a GPU: is it right, how fast, how much memory?

1. Agreement: outputs and the gradients of q, m, k, v and the content bias against the explicit formula in fp32
   (padding, causal, cross-attention shapes, widths that are not powers of two), in fp16 and bf16; relative L2
   error, exit status 1 over --tolerance.
2. Time and peak memory of forward + backward at long sequences (B x T, H heads, value width d_v): the fused
   kernel against (a) the explicit formula as the ``bmm`` kernel computes it (scores and probabilities written)
   and (b) torch's fused SDPA on standard heads (H x d_v queries and keys: fairseq's baseline attention core),
   with the FLOP ratio of the attention core (standard / collaborative = d_v / D_k per head).

Loads the kernel's file directly, so it needs torch and Triton only (no fairseq install):

    python benchmarks/fused_kernel.py [--shapes 8x1024,8x4096] [--key-dims 128,64] [--out fused.json]
    python benchmarks/fused_kernel.py --tune [--shapes 8x4096] [--key-dims 64,128]   # tile sizes, launch settings
"""

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_FILE = os.path.join(HERE, "..", "collab_fairseq", "modules", "fused_collab_attention.py")


def load_kernel():
    spec = importlib.util.spec_from_file_location("fused_collab_attention", KERNEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def explicit(q, m, k, v, c, pad, causal):
    """The bmm kernel's computation: B x H x T x S scores and probabilities in memory (float32 softmax)."""
    qh = q.unsqueeze(1) * m[None, :, None, :]
    scores = torch.matmul(qh, k.unsqueeze(1).transpose(-1, -2))
    if c is not None:
        scores = scores + c[:, :, None, :]
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    if causal:
        t, s = q.size(1), k.size(1)
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.matmul(scores.float().softmax(-1).type_as(v), v)


def inputs(bsz, heads, tgt_len, src_len, dim, value_dim, dtype, padding=True, content_bias=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, device="cuda")).to(dtype).requires_grad_()

    q, k = leaf(bsz, tgt_len, dim), leaf(bsz, src_len, dim)
    m = leaf(heads, dim, scale=dim**-0.5)
    v = leaf(bsz, heads, src_len, value_dim)
    c = leaf(bsz, heads, src_len) if content_bias else None
    pad = None
    if padding:
        lengths = torch.randint(src_len // 2, src_len + 1, (bsz,), device="cuda", generator=g)
        pad = torch.arange(src_len, device="cuda")[None, :] >= lengths[:, None]
    return q, m, k, v, c, pad


def relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def agreement(kernel, dtype):
    """Worst relative error of the fused kernel (dtype) against the explicit formula (fp32), per case."""
    cases = [  # B, H, T, S, D, d_v, causal, padding, content bias
        (16, 4, 23, 37, 128, 128, False, True, True),
        (16, 8, 41, 41, 64, 64, True, True, True),
        (4, 8, 300, 300, 128, 64, True, False, True),
        (8, 3, 19, 50, 40, 24, False, True, False),
        (32, 8, 1, 17, 128, 64, False, True, True),  # one decoding step
    ]
    rows = []
    for bsz, heads, tgt, src, dim, vdim, causal, padding, cb in cases:
        q, m, k, v, c, pad = inputs(bsz, heads, tgt, src, dim, vdim, dtype, padding, cb)
        leaves = [x for x in (q, m, k, v, c) if x is not None]
        out = kernel.fused_collab_attention(q, m, k, v, c, pad, causal, 0.0)
        ref_leaves = [x.detach().float().requires_grad_() for x in leaves]
        rq, rm, rk, rv = ref_leaves[:4]
        rc = ref_leaves[4] if cb else None
        ref = explicit(rq, rm, rk, rv, rc, pad, causal)
        grad = torch.randn_like(ref)
        got = torch.autograd.grad(out, leaves, grad.to(dtype))
        want = torch.autograd.grad(ref, ref_leaves, grad)
        errors = {"out": relative(out, ref)}
        errors.update({name: relative(g, w) for name, g, w in zip("qmkvc", got, want)})
        rows.append({"case": [bsz, heads, tgt, src, dim, vdim, causal, padding, cb], "errors": errors})
    return rows


def timed(fn, iters=20, warmup=5):
    """(median ms, peak bytes above the start) of fn() = forward + backward."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start_bytes = torch.cuda.memory_allocated()
    times = []
    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() - start_bytes


def speed(kernel, bsz, tokens, heads, key_dim, value_dim, dtype):
    q, m, k, v, c, pad = inputs(bsz, heads, tokens, tokens, key_dim, value_dim, dtype, padding=False)
    grad = torch.randn(bsz, heads, tokens, value_dim, device="cuda", dtype=dtype)
    sq, sk = (torch.randn(bsz, heads, tokens, value_dim, device="cuda", dtype=dtype, requires_grad=True) for _ in "qk")

    def run(fn, leaves):
        def step():
            for x in leaves:
                x.grad = None
            fn().backward(grad)

        return step

    rows = {}
    rows["sdpa, standard heads"] = timed(
        run(lambda: F.scaled_dot_product_attention(sq, sk, v, is_causal=True), [sq, sk, v])
    )
    rows["fused"] = timed(run(lambda: kernel.fused_collab_attention(q, m, k, v, c, None, True, 0.0), [q, m, k, v, c]))
    try:
        rows["explicit (bmm kernel)"] = timed(run(lambda: explicit(q, m, k, v, c, None, True), [q, m, k, v, c]))
    except torch.OutOfMemoryError:
        rows["explicit (bmm kernel)"] = None
    flop_ratio = (value_dim + value_dim) / (key_dim + value_dim)  # scores + P @ V per pair and head
    base_ms, base_bytes = rows["sdpa, standard heads"]
    return [
        {"shape": f"{bsz}x{tokens}", "heads": heads, "key_dim": key_dim, "value_dim": value_dim, "path": name,
         "ms": r[0] if r else None, "peak_bytes": r[1] if r else None,
         "speed_ratio": base_ms / r[0] if r else None, "memory_ratio": r[1] / base_bytes if r else None,
         "flop_ratio": flop_ratio}
        for name, r in rows.items()
    ]  # fmt: skip


CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 128, 4, 2),
           (32, 64, 4, 3), (128, 32, 4, 3)]  # fmt: skip


def tune(kernel, args):
    """--tune: tile sizes and launch settings (BLOCK_M, BLOCK_N, num_warps, num_stages) in place of the kernel's
    defaults (``_blocks``) for both passes, forward and forward + backward times at the last of --shapes; a
    configuration that does not compile (shared memory, registers) is reported, not fatal."""
    default_blocks = kernel._blocks
    bsz, tokens = map(int, args.shapes.split(",")[-1].split("x"))
    print("| D_k | BLOCK_M | BLOCK_N | warps | stages | forward ms | fwd+bwd ms |\n|---|---|---|---|---|---|---|")
    for key_dim, config in itertools.product(map(int, args.key_dims.split(",")), [None] + CONFIGS):
        if config is None:
            kernel._blocks = default_blocks
            label = "default"
        else:
            bm, bn, warps, stages = config

            def blocks(dim, value_dim, tgt_len=None, bm=bm, bn=bn, warps=warps, stages=stages):
                return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=kernel._pow2(dim), BLOCK_DV=kernel._pow2(value_dim),
                            num_warps=warps, num_stages=stages)  # fmt: skip

            kernel._blocks = blocks
            label = " | ".join(map(str, config))
        q, m, k, v, c, _ = inputs(bsz, args.heads, tokens, tokens, key_dim, args.value_dim, torch.float16, False)
        grad = torch.randn(bsz, args.heads, tokens, args.value_dim, device="cuda", dtype=torch.float16)
        try:
            with torch.no_grad():
                fwd, _ = timed(lambda: kernel.fused_collab_attention(q, m, k, v, c, None, True, 0.0))
            both, _ = timed(lambda: kernel.fused_collab_attention(q, m, k, v, c, None, True, 0.0).backward(grad))
            print(f"| {key_dim} | {label} | {fwd:.2f} | {both:.2f} |", flush=True)
        except Exception as err:  # noqa: BLE001  (a configuration that does not compile)
            print(f"| {key_dim} | {label} | failed: {type(err).__name__}: {str(err)[:80]} | |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="8x1024,8x4096", help="SENTENCESxTOKENS, comma-separated")
    p.add_argument("--key-dims", default="128,64")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--value-dim", type=int, default=64, help="d_v per head (E / H: 512 / 8)")
    p.add_argument("--tolerance", type=float, default=2e-2)
    p.add_argument("--out")
    p.add_argument("--tune", action="store_true", help="time tile sizes and launch settings instead (tune())")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("fused_kernel.py times CUDA kernels: run it on a GPU machine")
    kernel = load_kernel()
    if args.tune:
        return tune(kernel, args)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "agreement": {}, "speed": []}
    worst = 0.0
    for dtype in (torch.float16, torch.bfloat16):
        rows = agreement(kernel, dtype)
        result["agreement"][str(dtype)] = rows
        for r in rows:
            worst = max(worst, *r["errors"].values())
            print(str(dtype), r["case"], {k: f"{e:.1e}" for k, e in r["errors"].items()}, flush=True)
    for shape in args.shapes.split(","):
        bsz, tokens = map(int, shape.split("x"))
        for key_dim in map(int, args.key_dims.split(",")):
            for dtype in (torch.float16, torch.bfloat16):
                for row in speed(kernel, bsz, tokens, args.heads, key_dim, args.value_dim, dtype):
                    row["dtype"] = str(dtype)
                    result["speed"].append(row)
                    print(row, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print("| B x T | D_k | dtype | path | fwd+bwd ms | speed vs SDPA | FLOP ratio | peak memory vs SDPA |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["speed"]:
        if r["ms"] is None:
            print(f"| {r['shape']} | {r['key_dim']} | {r['dtype']} | {r['path']} | out of memory | | | |")
            continue
        print(f"| {r['shape']} | {r['key_dim']} | {r['dtype']} | {r['path']} | {r['ms']:.2f} | {r['speed_ratio']:.2f}x "
              f"| {r['flop_ratio']:.2f} | {r['memory_ratio']:.2f}x |")  # fmt: skip
    if worst > args.tolerance:
        sys.exit(f"the fused kernel disagrees with the explicit formula: worst relative error {worst:.2e}")


if __name__ == "__main__":
    main()
