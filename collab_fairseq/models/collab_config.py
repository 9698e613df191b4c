"""Options of the collaborative-attention transformer, declared once.

The transformer's own options stay fairseq's (``TransformerConfig``); these are
added next to them, on the command line (``--collab-key-dim`` ...) and in
``fairseq-hydra-train`` model configs (``collab_key_dim: 128`` ...).
"""

from dataclasses import dataclass, field, fields
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from collab_fairseq.modules.collaborative_attention import MIXING_INITS, MODES, check_key_dim
from collab_fairseq.modules.layer_choice import (  # noqa: F401  (re-exported: the options' parsers)
    ATTENTIONS,
    layer_key_dim,
    parse_attentions,
    parse_layer_key_dims,
)


@dataclass
class CollabAttentionConfig(FairseqDataclass):
    collab_key_dim: Optional[int] = field(
        default=None,
        metadata={
            "help": "D_k, the width of the key/query space shared by all heads of a layer "
            "(default: the embedding dim, i.e. H * d_k of the standard layer)"
        },
    )
    collab_mode: ChoiceEnum(MODES) = field(
        default="collaborative",
        metadata={
            "help": "collaborative: shared key/query projections + per-head mixing; concatenate: "
            "ordinary concatenated heads with per-head d_k = D_k / H (the paper's reduced-D_k baseline)"
        },
    )
    collab_attentions: str = field(
        default=",".join(ATTENTIONS),
        metadata={
            "help": f"comma-separated attentions that use --collab-mode, from {', '.join(ATTENTIONS)}; "
            "the others stay fairseq's MultiheadAttention"
        },
    )
    collab_mixing_init: ChoiceEnum(MIXING_INITS) = field(
        default="concatenate",
        metadata={
            "help": "initial mixing matrix: concatenate (head h starts on its own block of D_k/H dims), "
            "normal (N(0, 1/H)), xavier (xavier_uniform, as the authors' fairseq code)"
        },
    )
    collab_mixing_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "the mixing matrix learns this many times slower than the other weights (parametrised as "
            "M = scale * P, so Adam's step on M is scale * lr); 0 freezes it at its initial value"
        },
    )
    collab_layer_key_dims: str = field(
        default="",
        metadata={
            "help": "per-layer D_k overriding --collab-key-dim, comma-separated ATTENTION:LAYER=D_K, e.g. "
            "'encoder_self:0=192,encoder_decoder:5=64' (layers count from 0; collab-reparametrize --max-error writes it)"
        },
    )
    collab_no_content_bias: bool = field(
        default=False,
        metadata={"help": "drop the per-head key-dependent content bias c_h(y) = y W_C of collaborative heads"},
    )


def set_collab_defaults(args) -> None:
    """Fill the collab options missing from ``args`` with the dataclass defaults."""
    for f in fields(CollabAttentionConfig):
        if getattr(args, f.name, None) is None:
            setattr(args, f.name, f.default)


def validate_collab_args(args) -> None:
    """Check every collaborative layer the model would build; raise ValueError naming the fix."""
    attentions = parse_attentions(args.collab_attentions)
    shapes = {
        "encoder_self": (args.encoder_attention_heads, args.encoder_embed_dim, args.encoder_layers),
        "decoder_self": (args.decoder_attention_heads, args.decoder_embed_dim, args.decoder_layers),
        "encoder_decoder": (args.decoder_attention_heads, args.decoder_embed_dim, args.decoder_layers),
    }
    for name, layer in parse_layer_key_dims(args.collab_layer_key_dims):
        if name not in attentions:
            raise ValueError(f"--collab-layer-key-dims sets {name}:{layer} but {name} is not in --collab-attentions")
        if layer >= shapes[name][2]:
            raise ValueError(
                f"--collab-layer-key-dims: {name}:{layer} does not exist ({shapes[name][2]} layers, 0-based)"
            )
    for name in attentions:
        num_heads, embed_dim, layers = shapes[name]
        for layer in range(layers):
            key_dim = layer_key_dim(args, name, layer, embed_dim)
            try:
                check_key_dim(
                    key_dim, num_heads, str(args.collab_mode), str(args.collab_mixing_init), args.collab_mixing_lr_scale
                )
            except ValueError as err:
                raise ValueError(f"{name} attention (layer {layer}): {err}") from None
