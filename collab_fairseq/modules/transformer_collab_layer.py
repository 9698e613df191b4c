"""fairseq transformer layers whose attentions are built as CollaborativeMultiheadAttention.

Each layer overrides only fairseq's attention build hooks; everything else is
fairseq's ``TransformerEncoderLayerBase`` / ``TransformerDecoderLayerBase``.
Attentions not named in ``cfg.collab_attentions`` stay fairseq's MultiheadAttention.
"""

from typing import Optional

from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention
from collab_fairseq.modules.layer_choice import layer_key_dim


def build_collab_attention(
    layer, cfg, attention: str, embed_dim: int, num_heads: int, **fairseq_kwargs
) -> Optional[CollaborativeMultiheadAttention]:
    """The collaborative layer for ``attention`` ('encoder_self', ...), or None if it stays fairseq's.

    ``cfg`` carries the flat ``collab_*`` options next to fairseq's TransformerConfig; ``fairseq_kwargs``
    are the MultiheadAttention arguments fairseq's own hook would pass.
    """
    chosen = [a.strip() for a in str(getattr(cfg, "collab_attentions", "")).split(",")]
    if attention not in chosen:
        return None
    return CollaborativeMultiheadAttention(
        embed_dim,
        num_heads,
        dropout=cfg.attention_dropout,
        q_noise=layer.quant_noise,
        qn_block_size=layer.quant_noise_block_size,
        **fairseq_kwargs,
        key_dim=layer_key_dim(cfg, attention, layer.layer_index, embed_dim),
        mode=str(cfg.collab_mode),
        mixing_init=str(cfg.collab_mixing_init),
        mixing_lr_scale=float(getattr(cfg, "collab_mixing_lr_scale", 1.0)),
        content_bias=not getattr(cfg, "collab_no_content_bias", False),
    )


class CollabTransformerEncoderLayer(TransformerEncoderLayerBase):
    def __init__(self, cfg, return_fc=False, layer_index: int = 0):
        self.layer_index = layer_index  # read by the build hooks that fairseq's __init__ calls
        super().__init__(cfg, return_fc=return_fc)

    def build_self_attention(self, embed_dim, cfg):
        attn = build_collab_attention(
            self, cfg, "encoder_self", embed_dim, cfg.encoder.attention_heads, self_attention=True
        )
        return attn if attn is not None else super().build_self_attention(embed_dim, cfg)


class CollabTransformerDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, no_encoder_attn=False, layer_index: int = 0):
        self.layer_index = layer_index
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        attn = build_collab_attention(
            self, cfg, "decoder_self", embed_dim, cfg.decoder.attention_heads,
            add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, self_attention=not cfg.cross_self_attention,
        )  # fmt: skip
        return attn if attn is not None else super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn)

    def build_encoder_attention(self, embed_dim, cfg):
        attn = build_collab_attention(
            self, cfg, "encoder_decoder", embed_dim, cfg.decoder.attention_heads,
            kdim=cfg.encoder.embed_dim, vdim=cfg.encoder.embed_dim, encoder_decoder_attention=True,
        )  # fmt: skip
        return attn if attn is not None else super().build_encoder_attention(embed_dim, cfg)
