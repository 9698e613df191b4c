"""collab-reparametrize: turn a trained fairseq transformer into a transformer_collab model (CP decomposition).

    collab-reparametrize checkpoints/transformer/checkpoint_best.pt collab128.pt --key-dim 128
    fairseq-generate DATA --user-dir collab_fairseq --path collab128.pt ...           # use it as is
    fairseq-train DATA --user-dir collab_fairseq --finetune-from-model collab128.pt \\
        --arch transformer_collab_iwslt_de_en --collab-key-dim 128 ...                 # or fine-tune it

For every chosen attention layer, the H per-head products W_Q^h^T W_K^h are decomposed at rank D_k
(TensorLy CP-ALS on the GPU when there is one); per-head query biases become the content bias;
values, output projections and everything else are copied. Prints each layer's relative
reconstruction error and time.
"""

import argparse
import json
import sys
from typing import Optional

import torch
from tqdm import tqdm

import collab_fairseq  # noqa: F401  (allowlists fairseq's checkpoint objects for safe loading)
from collab_fairseq.files import check_writable, write_text_atomically
from collab_fairseq.models.collab_config import ATTENTIONS, parse_attentions, parse_layer_key_dims
from collab_fairseq.reparam.convert_checkpoint import (
    CheckpointError,
    check_output,
    load_checkpoint,
    reparametrize_checkpoint,
    save_atomically,
)


def fp16_loss_scale(state: dict) -> Optional[float]:
    """The fp16 loss scale the checkpoint's training had reached (fairseq's FP16Optimizer saves it with the
    optimizer state), or None (not fp16). The warm start's collaborative phase starts from it: a fresh fairseq-train
    run would start at 128 and skip updates finding it again (results/performance/README.md, fp16 loss scale)."""
    scale = (state.get("last_optimizer_state") or {}).get("loss_scale")
    return None if scale is None else float(scale)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="collab-reparametrize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", help="fairseq transformer (or --collab-mode concatenate transformer_collab) .pt")
    p.add_argument("output", help="where to write the transformer_collab checkpoint")
    p.add_argument("--key-dim", type=int, help="D_k of the collaborative layers (all, unless overridden below)")
    p.add_argument(
        "--layer-key-dims", default="", help="per-layer D_k, ATTENTION:LAYER=D_K,... (as --collab-layer-key-dims)"
    )
    p.add_argument(
        "--max-error",
        type=float,
        help="choose each layer's D_k: the smallest multiple of H whose relative error of the head products is <= this",
    )
    p.add_argument("--attentions", default=",".join(ATTENTIONS), help="which attentions to convert")
    p.add_argument("--n-iter", type=int, default=200, help="CP-ALS iterations per layer (default 200)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--mixing-lr-scale", type=float, default=1.0, help="stored with the model, as --collab-mixing-lr-scale"
    )
    p.add_argument("--report", help="also write the per-layer errors and times as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        attentions = parse_attentions(args.attentions)
        layer_key_dims = parse_layer_key_dims(args.layer_key_dims)
        if args.key_dim is None and args.max_error is None:
            raise CheckpointError("give --key-dim D_k, or --max-error E to choose D_k per layer")
        for d in [args.key_dim] + list(layer_key_dims.values()):
            if d is not None and d <= 0:
                raise CheckpointError(f"D_k must be a positive integer, got {d}")
        if args.max_error is not None and not 0 < args.max_error < 1:
            raise CheckpointError(f"--max-error is a relative error in (0, 1), got {args.max_error}")
        check_output(args.output, args.force)  # every output checked before the decomposition, not after it
        if args.report:
            check_writable(args.report)
        state = load_checkpoint(args.checkpoint)
        new_state, report = reparametrize_checkpoint(
            state,
            args.key_dim,
            attentions,
            n_iter=args.n_iter,
            device=device,
            mixing_lr_scale=args.mixing_lr_scale,
            progress=tqdm,
            layer_key_dims=layer_key_dims,
            max_error=args.max_error,
        )
        save_atomically(new_state, args.output, force=args.force)
        if args.report:
            report_json = {
                "key_dim": args.key_dim,
                "device": device,
                "source_fp16_loss_scale": fp16_loss_scale(state),
                "layers": report,
            }
            write_text_atomically(args.report, json.dumps(report_json, indent=1))
    except (CheckpointError, ValueError) as err:
        print(f"collab-reparametrize: error: {err}", file=sys.stderr)
        return 2
    for row in report:
        print(
            f"{row['layer']:<32} {row['attention']:<16} D_k {row['key_dim']:>4}  "
            f"rel. error {row['relative_error']:.4f}  {row['seconds']:.2f} s"
        )
    mean = sum(r["relative_error"] for r in report) / len(report)
    dims = sorted({r["key_dim"] for r in report})
    print(f"{len(report)} layers at D_k {dims} on {device}: mean relative error {mean:.4f} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
