"""``transformer_collab``: fairseq's transformer with collaborative multi-head attention.

Cordonnier, Loukas & Jaggi 2020, "Multi-Head Attention: Collaborate Instead of
Concatenate". The model is fairseq's (legacy, argparse-configured) transformer;
only the attention layers change, through the encoder/decoder layer build hooks.
Every architecture of fairseq's ``transformer`` model has a ``transformer_collab`` twin
(``transformer_wmt_en_de`` -> ``transformer_collab_wmt_en_de``) that only adds the ``collab_*`` defaults.
"""

import logging
import os
import sys
from typing import Dict

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.distributed import fsdp_wrap
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_NAME_REGISTRY, register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase, TransformerModel
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from omegaconf import OmegaConf

from collab_fairseq.models.collab_config import CollabAttentionConfig, collab_layers, set_collab_defaults
from collab_fairseq.models.sync_free import SyncFreeDecoderMixin, SyncFreeEncoderMixin
from collab_fairseq.modules import (
    CollaborativeMultiheadAttention,
    TransformerCollabDecoderLayer,
    TransformerCollabEncoderLayer,
)
from collab_fairseq.modules.attention_kernels import mark_future_mask
from collab_fairseq.needs_user_dir import TransformerCollabArgs, mark_collab_args

logger = logging.getLogger(__name__)

# fairseq transformer architecture -> its transformer_collab twin, from fairseq's own registry
COLLAB_ARCHS: Dict[str, str] = {
    arch: "transformer_collab" + arch[len("transformer") :]
    for arch, model in sorted(ARCH_MODEL_NAME_REGISTRY.items())
    if model == "transformer" and arch.startswith("transformer")
}


def _wrap_layer(layer, cfg):
    """Activation checkpointing and FSDP wrapping, as fairseq's build_*_layer does."""
    if cfg.checkpoint_activations:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not cfg.checkpoint_activations else 0)


def _layer_options(stack, kinds) -> dict:
    """{attention kind: options} of the next layer that ``stack`` builds (fairseq builds its layers in order)."""
    index = getattr(stack, "_layers_built", 0)
    stack._layers_built = index + 1
    return {kind: stack.collab_layers[(kind, index)] for kind in kinds if (kind, index) in stack.collab_layers}


class TransformerCollabEncoder(SyncFreeEncoderMixin, TransformerEncoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, return_fc=False):
        self.collab_layers = collab_layers(cfg)  # before fairseq's __init__ builds the layers
        super().__init__(cfg, dictionary, embed_tokens, return_fc=return_fc)

    def build_encoder_layer(self, cfg):
        collab = _layer_options(self, ["encoder_self"])
        return _wrap_layer(TransformerCollabEncoderLayer(cfg, return_fc=self.return_fc, collab=collab), cfg)


class TransformerCollabDecoder(SyncFreeDecoderMixin, TransformerDecoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, no_encoder_attn=False, output_projection=None):
        self.collab_layers = collab_layers(cfg)
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn, output_projection)

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        collab = _layer_options(self, ["decoder_self", "encoder_decoder"])
        return _wrap_layer(TransformerCollabDecoderLayer(cfg, no_encoder_attn, collab=collab), cfg)

    def buffered_future_mask(self, tensor):
        """fairseq's future mask, tagged as such: the kernels that take it as ``is_causal`` need not read its values
        (a host sync on the GPU)."""
        return mark_future_mask(super().buffered_future_mask(tensor))


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
        set_collab_defaults(args)  # checkpoints older than an option lack it
        collab_layers(args)  # parse and check the collab_* options before anything is built
        mark_collab_args(args)
        model = super().build_model(args, task)
        logger.info(
            "collaborative attention: mode=%s D_k=%s%s attentions=%s mixing_init=%s kernel=%s content_bias=%s",
            args.collab_mode,
            args.collab_key_dim if args.collab_key_dim is not None else "embed_dim",
            f" (per layer: {args.collab_layer_key_dims})" if args.collab_layer_key_dims else "",
            args.collab_attentions,
            args.collab_mixing_init,
            args.collab_attention_kernel,
            not args.collab_no_content_bias,
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


def _collab_architecture(fairseq_architecture):
    def architecture(args):
        set_collab_defaults(args)
        fairseq_architecture(args)
        # fairseq calls this function from two places: parse_args_and_arch (its CLIs, where a usage error should exit
        # as argparse's do) and models.build_model (also the hub interface, where the caller gets build_model's
        # ValueError); the caller's name is the one thing that tells them apart
        if sys._getframe(1).f_code.co_name == "parse_args_and_arch":
            refuse_bad_options(args)

    return architecture


def refuse_bad_options(args) -> None:
    """Exit with status 2 and one line naming the problem, as argparse does, if the collab options cannot describe a
    model. fairseq's CLIs call the architecture function while parsing the command line, before any data is read:
    checked there, a bad option costs neither the wait nor a traceback. (Elsewhere, e.g. for the hub interface,
    building the model raises the same ValueError.)"""
    try:
        collab_layers(args)
    except ValueError as err:
        print(f"{os.path.basename(sys.argv[0]) or 'fairseq'}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


for _arch, _collab_arch in COLLAB_ARCHS.items():
    register_model_architecture("transformer_collab", _collab_arch)(_collab_architecture(ARCH_CONFIG_REGISTRY[_arch]))
