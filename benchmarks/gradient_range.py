"""Which parameters' gradients are largest in a training step, and the fp16 loss scale at which each overflows.

fairseq's fp16 training multiplies the summed loss of a batch by the loss scale (--fp16-init-scale, 128 by
default), back-propagates in fp16 and skips the update (halving the scale) when a gradient is inf; the
gradients are divided by the batch's token count only afterwards. So a parameter whose summed-loss gradient
has an entry above 65504 / scale overflows at that scale. This builds each configuration with fairseq's own
task and model code at its initialisation (as profile_training_step.py), runs one forward + backward pass of
label-smoothed cross-entropy on random --sentences x --tokens batches in fp32 (device-independent values), and
reports, per parameter kind (mixing, content bias, q/k/v/out projections, embeddings, feed-forward, layer norms),
the largest |gradient| entry and the largest power-of-two loss scale that keeps it finite in fp16.
Gradients of activations inside the backward pass can overflow too; this measures the parameters' only.

    python benchmarks/gradient_range.py --vocab 8000 --sentences 512 --tokens 16 \\
        --config "transformer:--arch transformer_iwslt_de_en" \\
        --config "collab_dk128:--arch transformer_collab_iwslt_de_en --collab-key-dim 128"
    # a trained or converted model instead of the initialisation (same shapes; --vocab = its dictionary size):
    python benchmarks/gradient_range.py ... --load collab_dk128=work/run/warm_start_dk128.pt
"""

import json
import math
import re
from collections import defaultdict

import torch
from fairseq import checkpoint_utils
from model_steps import batches, build, for_each_config, step_parser

FP16_MAX = 65504.0
KINDS = [
    ("mixing", r"\.mixing$"),
    ("content_bias", r"content_bias"),
    ("q_proj", r"q_proj"),
    ("k_proj", r"k_proj"),
    ("v_proj", r"v_proj"),
    ("out_proj", r"attn\.out_proj"),
    ("feed_forward", r"fc[12]"),
    ("layer_norm", r"layer_norm"),
    ("embeddings", r"embed_tokens|output_projection"),
]


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), "other")


def measure(name, flags, data_dir, args):
    torch.manual_seed(1)
    model, criterion, task = build(flags, data_dir)
    if name in args.load:
        model.load_state_dict(checkpoint_utils.load_checkpoint_to_cpu(args.load[name])["model"])
    model.train()
    rows = defaultdict(lambda: {"max_abs": 0.0})
    for sample in batches(task, args.batches, args.sentences, args.tokens, torch.device("cpu")):
        model.zero_grad()
        loss, _, _ = criterion(model, sample)  # summed over the batch's tokens, as fairseq back-propagates it
        loss.backward()
        for pname, p in model.named_parameters():
            if p.grad is None:
                continue
            row = rows[kind_of(pname)]
            row["max_abs"] = max(row["max_abs"], p.grad.abs().max().item())
    out = {}
    for kind, row in rows.items():
        largest_scale = 2 ** math.floor(math.log2(FP16_MAX / row["max_abs"])) if row["max_abs"] > 0 else None
        out[kind] = {"max_abs_grad": row["max_abs"], "largest_fp16_loss_scale": largest_scale}
    return {"config": name, "flags": flags, "weights": args.load.get(name, "initialisation"), "kinds": out}


def main():
    p = step_parser(__doc__, sentences=512, top=0)
    p.add_argument("--batches", type=int, default=3, help="random batches; the maximum over them is reported")
    p.add_argument("--load", action="append", default=[], help="NAME=CHECKPOINT: that config's weights")
    args = p.parse_args()
    args.load = dict(spec.split("=", 1) for spec in args.load)
    rows = for_each_config(
        args,
        lambda name, flags, data_dir: measure(name, flags, data_dir, args),
        lambda row: max(row["kinds"].items(), key=lambda kv: kv[1]["max_abs_grad"])[0] + " largest",
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"sentences": args.sentences, "tokens": args.tokens, "vocab": args.vocab, "rows": rows}, f, indent=1
            )
    kinds = [k for k, _ in KINDS if any(k in r["kinds"] for r in rows)]
    print("| parameters | " + " | ".join(r["config"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for kind in kinds:
        cells = []
        for r in rows:
            k = r["kinds"].get(kind)
            cells.append("-" if k is None else f"{k['max_abs_grad']:.3g} (scale <= {k['largest_fp16_loss_scale']})")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
