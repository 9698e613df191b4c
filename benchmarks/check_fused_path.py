"""Check, on the GPU, that the fused path of CollaborativeMultiheadAttention equals its explicit path.

With kernel="sdpa" (bias and padding as a mask), "folded" (folded into extra key dimensions, no mask) or "flash"
(folded, queries, keys and values padded to one width) the layer takes F.scaled_dot_product_attention when no
weights are asked for, with kernel="fused" its own Triton kernel (collaborative mode, D_k <= 128; elsewhere it
falls back to bmm), with kernel="mixgemm" the token-major GEMMs (collaborative mode; elsewhere bmm), and an
explicit softmax(QK^T) path otherwise. This script runs
both on the same random inputs (padding, causal mask, cross-attention) in half precision and compares outputs and
every parameter's gradient by relative L2 error; it exits non-zero if any exceeds --tolerance (default by
precision: float16 5e-3, bfloat16 2e-2 (8 mantissa bits), float32 1e-4).

    python benchmarks/check_fused_path.py [--device cuda] [--dtype float16] [--tolerance T] [--kernels mixgemm,fused]
"""

import argparse
import sys

import torch

from collab_fairseq.modules import CollaborativeMultiheadAttention


def relative(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check(mode, key_dim, kind, device, dtype, kernel, embed_dim=512, heads=4, tgt_len=23, src_len=37, bsz=16):
    torch.manual_seed(0)
    layer = CollaborativeMultiheadAttention(
        embed_dim,
        heads,
        key_dim=key_dim,
        mode=mode,
        self_attention=kind != "cross",
        encoder_decoder_attention=kind == "cross",
    ).to(device, dtype)
    layer.kernel = kernel  # a kernel (not the explicit path) against the explicit path
    if layer.content_bias is not None:
        with torch.no_grad():
            layer.content_bias.weight.normal_(0, 0.05)
    src_len = src_len if kind == "cross" else tgt_len
    x = torch.randn(tgt_len, bsz, embed_dim, device=device, dtype=dtype)
    y = torch.randn(src_len, bsz, embed_dim, device=device, dtype=dtype) if kind == "cross" else x
    kwargs = {}
    if kind == "decoder_self":
        kwargs["attn_mask"] = torch.triu(torch.full((tgt_len, tgt_len), float("-inf"), device=device), 1)
    else:
        lengths = torch.randint(src_len // 2, src_len + 1, (bsz,), device=device)
        kwargs["key_padding_mask"] = torch.arange(src_len, device=device)[None, :] >= lengths[:, None]
    kwargs["static_kv"] = kind == "cross"
    results = []
    for need_weights in (False, True):
        layer.zero_grad()
        out, _ = layer(x, y, y, need_weights=need_weights, **kwargs)
        out.float().pow(2).sum().backward()
        grads = {n: p.grad.float().clone() for n, p in layer.named_parameters() if p.grad is not None}
        results.append((out.float(), grads))
    (fused, g_fused), (explicit, g_explicit) = results
    # k_proj.bias has no effect on the output (softmax-invariant): its true gradient is 0, so skip it
    errors = {n: relative(g_fused[n], g_explicit[n]) for n in g_explicit if n != "k_proj.bias"}
    return relative(fused, explicit), max(errors.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--tolerance", type=float, help="default: 5e-3 float16, 2e-2 bfloat16, 1e-4 float32")
    parser.add_argument("--kernels", default="sdpa,folded,flash,fused,mixgemm", help="comma-separated")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    tolerance = args.tolerance or {"float16": 5e-3, "bfloat16": 2e-2, "float32": 1e-4}[args.dtype]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{device_name}, {args.dtype}")
    print("| kernel | mode | D_k | attention | output rel. error | worst gradient rel. error |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for kernel in args.kernels.split(","):
        for mode, key_dim in [("collaborative", 128), ("concatenate", 128), ("collaborative", 512)]:
            for kind in ("encoder_self", "decoder_self", "cross"):
                out_err, grad_err = check(mode, key_dim, kind, args.device, dtype, kernel)
                worst = max(worst, out_err, grad_err)
                print(f"| {kernel} | {mode} | {key_dim} | {kind} | {out_err:.1e} | {grad_err:.1e} |")
    if worst > tolerance:
        sys.exit(f"fused and explicit paths disagree: worst relative error {worst:.2e} > {tolerance}")


if __name__ == "__main__":
    main()
