"""What a training step costs by count, not by clock: FLOPs and operator launches, fairseq's transformer vs collab.

Device-independent: each configuration is built with fairseq's own task and model code (as in
profile_training_step.py), runs one forward + backward pass of label-smoothed cross-entropy on a
--sentences x --tokens batch (no padding, so every configuration does the same token work) on the CPU in
fp32 (``--dtype float16``: in fp16, as fairseq's --fp16 casts the model, which adds the casts around softmaxes
computed in float32; several minutes on 2 cores), and counts

- FLOPs with torch.utils.flop_counter (matrix products; fused attention counted as its math form) for
  the whole step, and for the forward pass split into the attention layers' projections (q/k/v/out,
  content bias), their score and value products, and the rest (feed-forward layers, vocabulary);
- operators dispatched, views excluded: on a GPU each is about one kernel launch, so this is the launch
  overhead a configuration adds (fused kernels differ by device; the count is a proxy, not a trace);
- bytes read and written by the operators that are not matrix products or fused attention (elementwise,
  softmax, dropout, copies, reductions: memory-bound work), counted at the step's dtype: the traffic that
  GEMM FLOPs do not show.

The FLOP ratio is the speed-up a GPU could reach if the step were bound by matrix work alone: the ceiling
for the training words/s measured by train_throughput.py.

    python benchmarks/step_flops.py --out results/performance/step_flops.json \\
        --config "transformer_wmt_en_de:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import json
from collections import Counter

import torch
import torch.utils._pytree as pytree
from model_steps import batches, build, for_each_config, step_parser
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ATTENTION_MODULES = ("self_attn", "encoder_attn")
SCORE_OPS = ("bmm", "baddbmm", "_scaled_dot_product")
MATRIX_OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product", "_flash_attention", "_efficient_attention")


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operators a block dispatches (views excluded), and the
    bytes the operators other than matrix products and fused attention read and write."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.other_bytes = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name == "_unsafe_view":  # a view that aten does not mark as one
            return out
        self.counts[name] += 1
        if not name.startswith(MATRIX_OPS):
            tensors = [t for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.other_bytes[name] += sum(t.numel() * t.element_size() for t in tensors)
        return out


def split_flops(per_module):
    """{module path: {op: flops}} of a forward pass -> (total, attention projections, attention scores+values)."""
    total = sum(per_module["Global"].values())
    projections = scores = 0
    for path, ops in per_module.items():
        if not path.endswith(ATTENTION_MODULES):  # an attention layer's count includes its sub-modules
            continue
        for op, flops in ops.items():
            if any(str(op).startswith(f"aten.{s}") for s in SCORE_OPS):
                scores += flops
            else:
                projections += flops
    return total, projections, scores


def count_flops(fn):
    """FLOPs per module of fn(), fused attention run as its math decomposition (torch has no CPU flash formula)."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_flop_counts()


def count_config(name, flags, data_dir, args):
    model, criterion, task = build(flags, data_dir)
    model = model.to(getattr(torch, args.dtype)).train()  # float16: as fairseq's --fp16 casts the model
    (sample,) = batches(task, 1, args.sentences, args.tokens, torch.device("cpu"), padded=False)

    def forward():
        model.zero_grad(set_to_none=True)
        return criterion(model, sample)[0]

    def step():
        forward().backward()

    step()  # the first call builds caches (e.g. the future mask) that later steps reuse
    step_total = sum(count_flops(step)["Global"].values())
    # modules are attributed reliably in the forward pass only (backward hooks fire late)
    fwd_total, projections, scores = split_flops(count_flops(forward))
    with OperatorCounter() as ops:
        step()
    tokens = sample["ntokens"]
    return {
        "config": name,
        "flags": flags,
        "params": sum(p.numel() for p in model.parameters()),
        "target_tokens": tokens,
        "gflops_per_step": step_total / 1e9,
        "forward_flops_per_token": fwd_total / tokens,
        "forward_attention_projection_flops_per_token": projections / tokens,
        "forward_attention_score_flops_per_token": scores / tokens,
        "operators_per_step": sum(ops.counts.values()),
        "top_operators": ops.counts.most_common(args.top),
        "other_operator_bytes_per_token": sum(ops.other_bytes.values()) / tokens,
        "top_other_operators_bytes_per_token": [(k, v / tokens) for k, v in ops.other_bytes.most_common(args.top)],
    }


def main():
    parser = step_parser(__doc__, sentences=64, top=10)
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="float16 counts the operators as fp16 training on a GPU dispatches them (its casts around the "
        "float32 softmax included); its traffic column is then at fp16 too",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = for_each_config(
        args,
        lambda name, flags, data_dir: count_config(name, flags, data_dir, args),
        lambda row: f"{row['gflops_per_step']:.2f} GFLOP/step",
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "sentences": args.sentences,
                    "tokens": args.tokens,
                    "vocab": args.vocab,
                    "dtype": args.dtype,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    base = rows[0]
    print(
        f"one training step (forward + backward), {args.sentences} sentences x {args.tokens} tokens "
        f"(source and target), vocabulary {args.vocab}, {args.dtype}; MFLOP per target token"
    )
    print(
        "| config | params | step | forward | forward: attention projections | forward: attention scores+values "
        "| FLOP ratio (speed-up ceiling) | operators/step | operators vs baseline "
        "| other operators' KB/token | vs baseline |"
    )
    print("|---" * 11 + "|")
    for r in rows:
        print(
            f"| {r['config']} | {r['params']:,} | {r['gflops_per_step'] * 1e3 / r['target_tokens']:.1f} "
            f"| {r['forward_flops_per_token'] / 1e6:.1f} "
            f"| {r['forward_attention_projection_flops_per_token'] / 1e6:.2f} "
            f"| {r['forward_attention_score_flops_per_token'] / 1e6:.2f} "
            f"| {base['gflops_per_step'] / r['gflops_per_step']:.3f} | {r['operators_per_step']} "
            f"| {r['operators_per_step'] / base['operators_per_step']:.2f} "
            f"| {r['other_operator_bytes_per_token'] / 1e3:.1f} "
            f"| {r['other_operator_bytes_per_token'] / base['other_operator_bytes_per_token']:.2f} |"
        )


if __name__ == "__main__":
    main()
