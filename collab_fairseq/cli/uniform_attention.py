"""Copy a checkpoint with the chosen attentions made uniform: is attention doing work in this model?

Zeroes each chosen attention layer's query projection (weight and bias) and, in a collaborative layer, its
content bias. Every score q_h . k_j is then 0, so each query attends with equal weight to every key its masks
allow (padding; the future in decoder self-attention); values, outputs and everything else are unchanged.
Translating with the copy and comparing BLEU with the original's says how much the model needs those
attentions to be selective (results/reparametrization/README.md uses it to read re-parametrization results).

    python -m collab_fairseq.cli.uniform_attention RUN/checkpoint_best.pt uniform.pt --attentions encoder_decoder
"""

import argparse
import sys

import collab_fairseq  # noqa: F401  (allowlists fairseq's checkpoint objects for safe loading)
from collab_fairseq.models.collab_config import ATTENTIONS, parse_attentions
from collab_fairseq.reparam.convert_checkpoint import (
    CheckpointError,
    attention_layers,
    load_checkpoint,
    save_atomically,
)


def make_uniform_(model_state: dict, attentions) -> list:
    """Zero the score-making parameters of every layer of the given attention kinds, in place.

    model_state: a fairseq model state dict (``checkpoint["model"]``). Returns the layer prefixes changed."""
    changed = []
    for prefix, kind in attention_layers(model_state).items():
        if kind not in attentions:
            continue
        for name in ("q_proj.weight", "q_proj.bias", "content_bias.weight"):
            tensor = model_state.get(f"{prefix}.{name}")
            if tensor is not None:
                tensor.zero_()
        changed.append(prefix)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="fairseq transformer or transformer_collab checkpoint")
    parser.add_argument("output", help="where to write the copy")
    parser.add_argument(
        "--attentions",
        default=",".join(ATTENTIONS),
        help=f"comma-separated attentions to make uniform, from {', '.join(ATTENTIONS)} (default: all)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = parser.parse_args(argv)
    try:
        attentions = parse_attentions(args.attentions)
        state = load_checkpoint(args.checkpoint)
        changed = make_uniform_(state["model"], attentions)
        if not changed:
            raise CheckpointError(f"{args.checkpoint} has no attention layer of kind {args.attentions}")
        save_atomically(state, args.output, force=args.force)
    except (CheckpointError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"{len(changed)} attention layers ({args.attentions}) made uniform -> {args.output}")


if __name__ == "__main__":
    main()
