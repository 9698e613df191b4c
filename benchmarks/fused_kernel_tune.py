"""Try tile sizes and launch settings of the fused kernel on a GPU: forward and forward + backward times.

Each configuration (BLOCK_M, BLOCK_N, num_warps, num_stages) replaces the kernel's defaults (``_blocks``) for
both passes; configurations that do not compile (shared memory, registers) are reported, not fatal.

    python benchmarks/fused_kernel_tune.py [--shape 8x4096] [--key-dims 64,128]
"""

import argparse
import itertools

import torch
from fused_kernel import inputs, load_kernel, timed

CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 128, 4, 2),
           (32, 64, 4, 3), (128, 32, 4, 3)]  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8x4096")
    p.add_argument("--key-dims", default="64,128")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--value-dim", type=int, default=64)
    args = p.parse_args()
    kernel = load_kernel()
    default_blocks = kernel._blocks
    bsz, tokens = map(int, args.shape.split("x"))
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


if __name__ == "__main__":
    main()
