"""Which attentions are collaborative, and each layer's D_k: the parsers of --collab-attentions and
--collab-layer-key-dims (kept here, beside the layers that read them, so models/ and modules/ share them)."""

import re
from typing import Dict, List, Tuple

ATTENTIONS = ("encoder_self", "decoder_self", "encoder_decoder")


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
        dims[(m.group(1), int(m.group(2)))] = int(m.group(3))
    return dims


def layer_key_dim(cfg, attention: str, layer: int, embed_dim: int) -> int:
    """D_k of one attention layer: its --collab-layer-key-dims entry, else --collab-key-dim, else embed_dim."""
    override = parse_layer_key_dims(getattr(cfg, "collab_layer_key_dims", "")).get((attention, layer))
    if override is not None:
        return override
    key_dim = getattr(cfg, "collab_key_dim", None)
    return key_dim if key_dim is not None else embed_dim
