"""Options of the collaborative-attention transformer: declared, parsed and checked here, once.

The transformer's own options stay fairseq's (``TransformerConfig``); these are added next to
them, on the command line (``--collab-key-dim`` ...) and in ``fairseq-hydra-train`` model
configs (``collab_key_dim: 128`` ...). :func:`collab_layers` turns them into the options of
every collaborative attention layer; the layer build hooks only look their layer up.
"""

import functools
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Dict, List, Optional, Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from collab_fairseq.modules.attention_kernels import KERNEL_NAMES
from collab_fairseq.modules.collaborative_attention import MIXING_INITS, MODES, check_layer_options

# attention kind -> the stack whose layers hold it (and whose heads, layers and width it has)
ATTENTIONS = {"encoder_self": "encoder", "decoder_self": "decoder", "encoder_decoder": "decoder"}


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
            "'encoder_self:0=192,encoder_decoder:5=64' (layers count from 0; collab-reparametrize "
            "--max-error writes it)"
        },
    )
    collab_no_content_bias: bool = field(
        default=False,
        metadata={"help": "drop the per-head key-dependent content bias c_h(y) = y W_C of collaborative heads"},
    )
    collab_attention_kernel: ChoiceEnum(KERNEL_NAMES) = field(
        default="auto",
        metadata={
            "help": "how collaborative heads compute attention when no weights are returned (the same function "
            "either way): auto (picks by device and length), or one of bmm, mixgemm, fused, folded, sdpa, flash; "
            "what each is for, and which auto takes: collab_fairseq/modules/attention_kernels.py"
        },
    )


COLLAB_OPTIONS = {f.name: f.default for f in fields(CollabAttentionConfig) if f.name.startswith("collab_")}


def set_collab_defaults(args) -> None:
    """Fill the collab options missing from ``args`` with the dataclass defaults."""
    for name, default in COLLAB_OPTIONS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)


def parse_attentions(spec: str) -> List[str]:
    """'encoder_self,decoder_self' -> ['encoder_self', 'decoder_self']; ValueError on unknown names."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    unknown = [n for n in names if n not in ATTENTIONS]
    if unknown:
        raise ValueError(
            f"--collab-attentions: unknown attention(s) {', '.join(unknown)}; choose from {', '.join(ATTENTIONS)}"
        )
    return names


def parse_layer_key_dims(spec: str) -> Dict[Tuple[str, int], int]:
    """'encoder_self:0=192,encoder_decoder:5=64' -> {('encoder_self', 0): 192, ...}; ValueError naming the fix."""
    dims = {}
    for item in (s.strip() for s in str(spec or "").split(",")):
        if not item:
            continue
        m = re.fullmatch(r"(\w+):(\d+)=(-?\d+)", item)
        if not m or m.group(1) not in ATTENTIONS:
            raise ValueError(
                f"--collab-layer-key-dims: cannot read {item!r}; write ATTENTION:LAYER=D_K with ATTENTION one of "
                f"{', '.join(ATTENTIONS)}, e.g. encoder_self:0=192"
            )
        where = (m.group(1), int(m.group(2)))
        if where in dims:
            raise ValueError(
                f"--collab-layer-key-dims sets {where[0]}:{where[1]} twice ({dims[where]} and {m.group(3)}): keep one"
            )
        dims[where] = int(m.group(3))
    return dims


def format_layer_key_dims(dims: Dict[Tuple[str, int], int]) -> str:
    """The inverse of :func:`parse_layer_key_dims` (sorted)."""
    return ",".join(f"{attention}:{layer}={d}" for (attention, layer), d in sorted(dims.items()))


def _stack_value(cfg, stack: str, name: str):
    """``cfg.encoder_layers`` of an argparse namespace, or ``cfg.encoder.layers`` of a TransformerConfig."""
    flat = getattr(cfg, f"{stack}_{name}", None)
    return flat if flat is not None else getattr(getattr(cfg, stack), name)


def attention_heads(cfg) -> Dict[str, int]:
    """Heads of each attention kind of the model that ``cfg`` describes."""
    return {kind: _stack_value(cfg, stack, "attention_heads") for kind, stack in ATTENTIONS.items()}


@dataclass(frozen=True)
class CollabLayerOptions:
    """What one collaborative attention layer is built with: where it is, and CollaborativeMultiheadAttention's
    keywords (:meth:`layer_kwargs`)."""

    attention: str
    layer: int
    key_dim: int
    mode: str
    mixing_init: str
    mixing_lr_scale: float
    content_bias: bool
    kernel: str

    def layer_kwargs(self) -> Dict[str, object]:
        kwargs = dict(self.__dict__)
        del kwargs["attention"], kwargs["layer"]
        return kwargs


def collab_layers(cfg) -> Dict[Tuple[str, int], CollabLayerOptions]:
    """{(attention kind, 0-based layer): its options} for every attention that ``cfg.collab_*`` makes
    collaborative or concatenated; the attentions not in it stay fairseq's. Parsed once per distinct set of
    options; ValueError naming the fix for options that cannot describe a model."""
    shapes = tuple(
        (kind, *(_stack_value(cfg, stack, name) for name in ("layers", "embed_dim", "attention_heads")))
        for kind, stack in ATTENTIONS.items()
    )
    # choice options may be fairseq's StrEnum members (hydra configs): their str() is the value
    values = tuple(
        str(v) if isinstance(v, Enum) else v for v in (getattr(cfg, name, d) for name, d in COLLAB_OPTIONS.items())
    )
    return _collab_layers(values, shapes)


@functools.lru_cache(maxsize=16)
def _collab_layers(values: tuple, shapes: tuple) -> Dict[Tuple[str, int], CollabLayerOptions]:
    opts = dict(zip(COLLAB_OPTIONS, values))
    attentions = parse_attentions(opts["collab_attentions"])
    overrides = parse_layer_key_dims(opts["collab_layer_key_dims"])
    layer_counts = {kind: layers for kind, layers, _, _ in shapes}
    for kind, layer in overrides:
        if kind not in attentions:
            raise ValueError(f"--collab-layer-key-dims sets {kind}:{layer} but {kind} is not in --collab-attentions")
        if layer >= layer_counts[kind]:
            raise ValueError(
                f"--collab-layer-key-dims: {kind}:{layer} does not exist ({layer_counts[kind]} layers, 0-based)"
            )
    default_key_dim = opts["collab_key_dim"]
    plan = {}
    for kind, layers, embed_dim, heads in shapes:
        if kind not in attentions:
            continue
        for layer in range(layers):
            key_dim = overrides.get((kind, layer), default_key_dim if default_key_dim is not None else embed_dim)
            options = dict(
                key_dim=key_dim,
                mode=opts["collab_mode"],
                mixing_init=opts["collab_mixing_init"],
                mixing_lr_scale=float(opts["collab_mixing_lr_scale"]),
                kernel=opts["collab_attention_kernel"],
            )
            try:
                check_layer_options(num_heads=heads, **options)
            except ValueError as err:
                raise ValueError(f"{kind} attention (layer {layer}): {err}") from None
            plan[(kind, layer)] = CollabLayerOptions(
                attention=kind, layer=layer, content_bias=not opts["collab_no_content_bias"], **options
            )
    return plan
