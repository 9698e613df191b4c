"""``transformer_collab``: fairseq's transformer with collaborative multi-head attention.

Cordonnier, Loukas & Jaggi 2020, "Multi-Head Attention: Collaborate Instead of
Concatenate". The model is fairseq's (legacy, argparse-configured) transformer;
only the attention layers change, through the encoder/decoder layer build hooks.
The architectures mirror fairseq's and only add the ``collab_*`` defaults.
"""

import logging

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerDecoderBase,
    TransformerEncoderBase,
    TransformerModel,
    base_architecture,
    transformer_iwslt_de_en,
    transformer_vaswani_wmt_en_de_big,
    transformer_wmt_en_de,
    transformer_wmt_en_de_big,
)
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from omegaconf import OmegaConf

from collab_fairseq.models.collab_config import CollabAttentionConfig, set_collab_defaults, validate_collab_args
from collab_fairseq.modules import CollabTransformerDecoderLayer, CollabTransformerEncoderLayer
from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention
from collab_fairseq.needs_user_dir import TransformerCollabArgs, mark_collab_args

logger = logging.getLogger(__name__)


def _wrap_layer(layer, cfg):
    """Activation checkpointing and FSDP wrapping, as fairseq's build_*_layer does."""
    if cfg.checkpoint_activations:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not cfg.checkpoint_activations else 0)


def _next_layer_index(stack) -> int:
    """0, 1, 2 ... over the build_*_layer calls of one encoder/decoder (fairseq builds its layers in order)."""
    index = getattr(stack, "_layers_built", 0)
    stack._layers_built = index + 1
    return index


class TransformerCollabEncoder(TransformerEncoderBase):
    def build_encoder_layer(self, cfg):
        layer = CollabTransformerEncoderLayer(cfg, return_fc=self.return_fc, layer_index=_next_layer_index(self))
        return _wrap_layer(layer, cfg)


class TransformerCollabDecoder(TransformerDecoderBase):
    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        layer = CollabTransformerDecoderLayer(cfg, no_encoder_attn, layer_index=_next_layer_index(self))
        return _wrap_layer(layer, cfg)


@register_model("transformer_collab")
class TransformerCollabModel(TransformerModel):
    """Transformer whose chosen attentions (``--collab-attentions``) share key/query projections of width D_k."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        # defaults are filled by the architecture functions, as for fairseq's own options
        gen_parser_from_dataclass(parser, CollabAttentionConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        if OmegaConf.is_config(args):
            # fairseq-hydra-train hands a DictConfig, whose extra (collab_*) keys TransformerConfig.from_namespace drops
            args = TransformerCollabArgs(**OmegaConf.to_container(args, resolve=True))
        base_collab_architecture(args)
        validate_collab_args(args)
        mark_collab_args(args)
        model = super().build_model(args, task)
        logger.info(
            "collaborative attention: mode=%s D_k=%s attentions=%s mixing_init=%s",
            args.collab_mode,
            args.collab_key_dim if args.collab_key_dim is not None else "embed_dim",
            args.collab_attentions,
            args.collab_mixing_init,
        )
        return model

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens):
        return TransformerCollabEncoder(cfg, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens):
        return TransformerCollabDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        check_attention_shapes(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def check_attention_shapes(model, state_dict):
    """Raise ValueError if the checkpoint's attention layers differ from the model's (D_k, mode).

    fairseq would only report "size mismatch"; this names the layer, both key dims and the fix.
    """
    for name, module in model.named_modules():
        if not isinstance(module, CollaborativeMultiheadAttention):
            continue
        stored = state_dict.get(f"{name}.q_proj.weight")
        if stored is None:
            continue
        stored_collab = f"{name}.mixing" in state_dict
        if stored.shape[0] != module.key_dim or stored_collab != module.collaborative:
            stored_mode = "collaborative" if stored_collab else "concatenate/standard"
            raise ValueError(
                f"checkpoint layer {name} has D_k={stored.shape[0]} ({stored_mode} heads) but the model was built "
                f"with D_k={module.key_dim} ({module.mode}): pass the checkpoint's --collab-key-dim / --collab-mode, "
                "or convert a standard transformer with collab-reparametrize"
            )


@register_model_architecture("transformer_collab", "transformer_collab")
def base_collab_architecture(args):
    set_collab_defaults(args)
    base_architecture(args)


@register_model_architecture("transformer_collab", "transformer_collab_iwslt_de_en")
def transformer_collab_iwslt_de_en(args):
    set_collab_defaults(args)
    transformer_iwslt_de_en(args)


@register_model_architecture("transformer_collab", "transformer_collab_wmt_en_de")
def transformer_collab_wmt_en_de(args):
    set_collab_defaults(args)
    transformer_wmt_en_de(args)


@register_model_architecture("transformer_collab", "transformer_collab_vaswani_wmt_en_de_big")
def transformer_collab_vaswani_wmt_en_de_big(args):
    set_collab_defaults(args)
    transformer_vaswani_wmt_en_de_big(args)


@register_model_architecture("transformer_collab", "transformer_collab_wmt_en_de_big")
def transformer_collab_wmt_en_de_big(args):
    set_collab_defaults(args)
    transformer_wmt_en_de_big(args)
