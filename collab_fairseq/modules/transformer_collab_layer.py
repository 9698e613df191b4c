"""fairseq transformer layers whose attentions are built as CollaborativeMultiheadAttention.

Each layer overrides only fairseq's attention build hooks; everything else is fairseq's
``TransformerEncoderLayerBase`` / ``TransformerDecoderLayerBase``. A layer receives the already parsed
options of its collaborative attentions (``{attention kind: options}``, from
``collab_fairseq.models.collab_config.collab_layers``); attentions without options stay fairseq's
MultiheadAttention.
"""

from typing import Any, Dict, Optional

from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention


def build_collab_attention(
    layer, cfg, options: Optional[Any], embed_dim: int, num_heads: int, **fairseq_kwargs
) -> Optional[CollaborativeMultiheadAttention]:
    """The collaborative attention built with ``options`` (a CollabLayerOptions), or None if it has none.

    ``fairseq_kwargs`` are the MultiheadAttention arguments fairseq's own hook would pass.
    """
    if options is None:
        return None
    try:
        return CollaborativeMultiheadAttention(
            embed_dim,
            num_heads,
            dropout=cfg.attention_dropout,
            q_noise=layer.quant_noise,
            qn_block_size=layer.quant_noise_block_size,
            **fairseq_kwargs,
            **options.layer_kwargs(),
        )
    except ValueError as err:
        raise ValueError(f"{options.attention} attention (layer {options.layer}): {err}") from None


class TransformerCollabEncoderLayer(TransformerEncoderLayerBase):
    def __init__(self, cfg, return_fc=False, collab: Optional[Dict[str, Any]] = None):
        self.collab = collab or {}  # read by the build hooks that fairseq's __init__ calls
        super().__init__(cfg, return_fc=return_fc)

    def build_self_attention(self, embed_dim, cfg):
        attn = build_collab_attention(
            self, cfg, self.collab.get("encoder_self"), embed_dim, cfg.encoder.attention_heads, self_attention=True
        )
        return attn if attn is not None else super().build_self_attention(embed_dim, cfg)


class TransformerCollabDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, no_encoder_attn=False, collab: Optional[Dict[str, Any]] = None):
        self.collab = collab or {}
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        attn = build_collab_attention(
            self,
            cfg,
            self.collab.get("decoder_self"),
            embed_dim,
            cfg.decoder.attention_heads,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
            self_attention=not cfg.cross_self_attention,
        )
        return attn if attn is not None else super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn)

    def build_encoder_attention(self, embed_dim, cfg):
        attn = build_collab_attention(
            self,
            cfg,
            self.collab.get("encoder_decoder"),
            embed_dim,
            cfg.decoder.attention_heads,
            kdim=cfg.encoder.embed_dim,
            vdim=cfg.encoder.embed_dim,
            encoder_decoder_attention=True,
        )
        return attn if attn is not None else super().build_encoder_attention(embed_dim, cfg)
