"""fairseq transformer layers whose attentions are built as CollaborativeMultiheadAttention.

Each layer overrides only fairseq's attention build hooks; everything else is
fairseq's ``TransformerEncoderLayerBase`` / ``TransformerDecoderLayerBase``.
"""

from typing import Optional

from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention


def collab_kwargs(cfg, attention: str, embed_dim: int) -> Optional[dict]:
    """Keyword arguments of the collaborative layer for ``attention``, or None to keep fairseq's.

    ``cfg`` carries the flat ``collab_*`` options next to fairseq's TransformerConfig.
    """
    chosen = [a.strip() for a in str(getattr(cfg, "collab_attentions", "")).split(",")]
    if attention not in chosen:
        return None
    key_dim = getattr(cfg, "collab_key_dim", None)
    return dict(
        key_dim=key_dim if key_dim is not None else embed_dim,
        mode=str(cfg.collab_mode),
        mixing_init=str(cfg.collab_mixing_init),
    )


class CollabTransformerEncoderLayer(TransformerEncoderLayerBase):
    def build_self_attention(self, embed_dim, cfg):
        kwargs = collab_kwargs(cfg, "encoder_self", embed_dim)
        if kwargs is None:
            return super().build_self_attention(embed_dim, cfg)
        return CollaborativeMultiheadAttention(
            embed_dim,
            cfg.encoder.attention_heads,
            dropout=cfg.attention_dropout,
            self_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
            **kwargs,
        )


class CollabTransformerDecoderLayer(TransformerDecoderLayerBase):
    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        kwargs = collab_kwargs(cfg, "decoder_self", embed_dim)
        if kwargs is None:
            return super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn)
        return CollaborativeMultiheadAttention(
            embed_dim,
            cfg.decoder.attention_heads,
            dropout=cfg.attention_dropout,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
            self_attention=not cfg.cross_self_attention,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
            **kwargs,
        )

    def build_encoder_attention(self, embed_dim, cfg):
        kwargs = collab_kwargs(cfg, "encoder_decoder", embed_dim)
        if kwargs is None:
            return super().build_encoder_attention(embed_dim, cfg)
        return CollaborativeMultiheadAttention(
            embed_dim,
            cfg.decoder.attention_heads,
            kdim=cfg.encoder.embed_dim,
            vdim=cfg.encoder.embed_dim,
            dropout=cfg.attention_dropout,
            encoder_decoder_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
            **kwargs,
        )
