"""One self-attention layer, forward + backward: fairseq's MultiheadAttention against collaborative heads.

Rows (E=512, H=8, training mode, key padding, autocast): fairseq MultiheadAttention (the baseline),
a naive collaborative layer written like the authors' code (per-head keys materialised, explicit
softmax), and ours with each kernel (sdpa: torch's fused attention; bmm: one GEMM of all heads'
queries against the shared keys; folded; flash: folded with padded values; fused: the Triton kernel; mixgemm),
at D_k in {512, 256, 128, 64} and several (sentences x tokens): time, peak memory of forward + backward, and the
FLOP ratio in closed form (every collaborative head scores over all D_k dimensions: H x D_k multiply-adds per
query-key pair, against the standard layer's H x d_k = E), the ceiling of the speed ratio at long sequences.
Before timing, each of our paths is checked against the naive formulation in float32 on the same weights and
inputs (outputs and gradients); a path that disagrees is not timed. Also measures the incremental
decoding key cache (bytes per sentence per step) against fairseq's.

    python benchmarks/attention_layer.py --out results/performance_layer.json
    python benchmarks/attention_layer.py --shapes 8x1024,8x4096 --key-dims 128,64 --dtype float16  # long
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor

from collab_fairseq.attention_backends import default_cudnn_attention
from collab_fairseq.modules import CollaborativeMultiheadAttention

EMBED, HEADS = 512, 8


def naive_collab(layer: CollaborativeMultiheadAttention, x, padding):
    """The paper-code formulation: per-head copies of the keys, explicit scores + content bias + softmax."""
    tgt, bsz, _ = x.shape
    q, k, v = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)
    # scaled before the product: unscaled scores overflow fp16 at 4096 tokens
    mixed_q = q.transpose(0, 1)[:, None] * (layer.mixing_matrix() * layer.scaling)[None, :, None, :]  # B H T D_k
    keys = k.transpose(0, 1)[:, None].expand(-1, HEADS, -1, -1).contiguous()  # B H S D_k, one copy per head
    scores = torch.matmul(mixed_q, keys.transpose(-1, -2))
    scores = scores + layer.content_bias(x).permute(1, 2, 0)[:, :, None, :]
    scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    probs = F.softmax(scores.float(), dim=-1).type_as(scores)
    vh = v.view(tgt, bsz, HEADS, -1).permute(1, 2, 0, 3)
    out = torch.matmul(probs, vh).permute(2, 0, 1, 3).reshape(tgt, bsz, EMBED)
    return layer.out_proj(out)


def layer_flops(bsz, tokens, key_dim=None, heads=HEADS, embed=EMBED):
    """Multiply-adds x 2 of one self-attention layer's forward + backward (backward = 2x forward), closed form.

    key_dim None: fairseq's layer (q, k, v, out projections E x E; scores and P @ V over E dims in all).
    Otherwise collaborative: q, k projections E x D_k, content bias E x H, scores H x D_k per pair."""
    n, pairs = bsz * tokens, bsz * tokens * tokens
    if key_dim is None:
        projections, scores = 4 * n * embed * embed, pairs * embed
    else:
        projections, scores = n * embed * (2 * key_dim + heads + 2 * embed), pairs * heads * key_dim
    values = pairs * embed  # P @ V over all heads' d_v
    return 3 * 2 * (projections + scores + values)


def objective(out: Tensor) -> Tensor:
    """The scalar every forward + backward here differentiates: a sum, not a mean. fp16 gradients of a mean over
    the millions of outputs of an 8 x 4096 layer (1 / N each) fall below fp16's smallest subnormal (6e-8) and
    flush to zero without fairseq's loss scaling; the sum keeps them near 1."""
    return out.float().pow(2).sum()


def timed(fn, x, iters, warmup=5):
    """(median milliseconds, peak bytes allocated above the start) of fn(x) forward + backward."""
    times = []
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start_bytes = torch.cuda.memory_allocated()
    for i in range(warmup + iters):
        x.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        objective(fn(x)).backward()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() - start_bytes


def agree(layer, impl, x, padding, dtype, tol):
    """Relative error of our path (autocast to dtype) vs the naive formulation in float32 (output and every
    gradient)."""

    def run(fn, autocast):
        layer.zero_grad()
        xx = x.detach().clone().requires_grad_()
        with torch.autocast(x.device.type, dtype=dtype, enabled=autocast):
            out = fn(xx)
        objective(out).backward()
        return [out.float()] + [p.grad.float().clone() for p in layer.parameters() if p.grad is not None]

    layer.kernel = impl
    ours = run(lambda xx: layer(xx, xx, xx, key_padding_mask=padding, need_weights=False)[0], True)
    ref = run(lambda xx: naive_collab(layer, xx, padding), False)
    err = max(((a - b).norm() / b.norm().clamp_min(1e-12)).item() for a, b in zip(ours, ref))
    return err, err <= tol


def cache_bytes(layer, steps=10, bsz=4):
    """Bytes of the cached keys (+ content bias) per sentence after ``steps`` incremental decoding steps."""
    state = {}
    x = torch.randn(1, bsz, EMBED, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        for _ in range(steps):
            layer(x, x, x, incremental_state=state)
    buf = layer._get_input_buffer(state)
    keys = [buf[name] for name in ("prev_key", "prev_content_bias") if buf.get(name) is not None]
    return sum(t.numel() * t.element_size() for t in keys) / bsz / steps


def main():
    default_cudnn_attention("0")  # measured with cuDNN's attention off, as the recipes train
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256x32,64x128,16x512", help="SENTENCESxTOKENS, comma-separated")
    p.add_argument("--key-dims", default="512,256,128,64")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--out")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_layer.py times CUDA kernels: run it on a GPU machine")
    dtype = getattr(torch, args.dtype)
    tol = {"bfloat16": 3e-2, "float16": 1e-2}[args.dtype]
    rows, cache = [], []
    for shape in args.shapes.split(","):
        bsz, tokens = map(int, shape.split("x"))
        torch.manual_seed(0)
        x = torch.randn(tokens, bsz, EMBED, device="cuda", requires_grad=True)
        lengths = torch.randint(tokens // 2, tokens + 1, (bsz,), device="cuda")
        padding = torch.arange(tokens, device="cuda")[None, :] >= lengths[:, None]
        base = MultiheadAttention(EMBED, HEADS, self_attention=True).cuda().train()

        def run_base(xx):
            with torch.autocast("cuda", dtype=dtype):
                return base(xx, xx, xx, key_padding_mask=padding, need_weights=False)[0]

        base_ms, base_bytes = timed(run_base, x, args.iters)
        base_flops = layer_flops(bsz, tokens)
        rows.append(
            {"shape": shape, "layer": "fairseq MultiheadAttention", "key_dim": EMBED, "ms": base_ms, "ratio": 1.0,
             "peak_bytes": base_bytes, "memory_ratio": 1.0, "flop_ratio": 1.0}
        )  # fmt: skip
        for key_dim in map(int, args.key_dims.split(",")):
            layer = CollaborativeMultiheadAttention(EMBED, HEADS, self_attention=True, key_dim=key_dim).cuda().train()
            with torch.no_grad():
                layer.content_bias.weight.normal_(0, 0.02)
                layer.set_mixing_(layer.mixing_matrix() + 0.1 * torch.randn_like(layer.mixing))

            def run_naive(xx):
                with torch.autocast("cuda", dtype=dtype):
                    return naive_collab(layer, xx, padding)

            flop_ratio = base_flops / layer_flops(bsz, tokens, key_dim)
            ms, peak = timed(run_naive, x, args.iters)
            rows.append(
                {"shape": shape, "layer": "naive collaborative", "key_dim": key_dim, "ms": ms, "ratio": base_ms / ms,
                 "peak_bytes": peak, "memory_ratio": peak / base_bytes, "flop_ratio": flop_ratio}
            )  # fmt: skip
            for impl in ("sdpa", "bmm", "folded", "flash", "fused", "mixgemm"):
                try:
                    err, ok = agree(layer, impl, x, padding, dtype, tol)
                except Exception as exc:  # an experimental kernel that fails here must not cost the other rows
                    rows.append({"shape": shape, "layer": f"ours ({impl})", "key_dim": key_dim, "failed": repr(exc)})
                    print(rows[-1], file=sys.stderr, flush=True)
                    continue
                row = {"shape": shape, "layer": f"ours ({impl})", "key_dim": key_dim, "max_rel_error": err}
                if ok:
                    layer.kernel = impl

                    def run_ours(xx):
                        with torch.autocast("cuda", dtype=dtype):
                            return layer(xx, xx, xx, key_padding_mask=padding, need_weights=False)[0]

                    row["ms"], row["peak_bytes"] = timed(run_ours, x, args.iters)
                    row.update(ratio=base_ms / row["ms"], memory_ratio=row["peak_bytes"] / base_bytes)
                    row["flop_ratio"] = flop_ratio
                else:
                    row["refused"] = f"disagrees with the naive formulation (rel. error {err:.2e} > {tol})"
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    for key_dim in map(int, args.key_dims.split(",")):
        ours = CollaborativeMultiheadAttention(EMBED, HEADS, self_attention=True, key_dim=key_dim).cuda().half().eval()
        base = MultiheadAttention(EMBED, HEADS, self_attention=True).cuda().half().eval()
        b, o = cache_bytes(base), cache_bytes(ours)
        cache.append({"key_dim": key_dim, "fairseq_bytes": b, "ours_bytes": o, "ratio": o / b})
    result = {
        "dtype": args.dtype,
        "embed_dim": EMBED,
        "heads": HEADS,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": rows,
        "key_cache": cache,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print("| sentences x tokens | layer | D_k | fwd+bwd ms | speed vs fairseq | FLOP ratio | peak memory vs fairseq |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['ratio']:.2f}x" if "ratio" in r else r.get("refused", r.get("failed", ""))
        ms = f"{r['ms']:.3f}" if "ms" in r else "-"
        memory = f"{r['memory_ratio']:.2f}x" if "memory_ratio" in r else "-"
        flops = f"{r['flop_ratio']:.2f}" if "flop_ratio" in r else "-"
        print(f"| {r['shape']} | {r['layer']} | {r['key_dim']} | {ms} | {speed} | {flops} | {memory} |")
    print("\n| D_k | key cache bytes/sentence/step, fairseq | ours | ratio |\n|---|---|---|---|")
    for c in cache:
        print(f"| {c['key_dim']} | {c['fairseq_bytes']:.0f} | {c['ours_bytes']:.0f} | {c['ratio']:.3f} |")


if __name__ == "__main__":
    main()
