"""fairseq's transformer encoder and decoder forward without their host syncs.

fairseq's encoder evaluates ``if encoder_padding_mask.any()`` before each layer and its decoder
``if prev_output_tokens.eq(pad).any()`` once: on a GPU each is a host sync that waits for the work before it, so
the host cannot run ahead of the device, and a CUDA graph cannot be captured across it. The mixins below compute the
same (every layer gets the padding mask, all False where there is no padding; tests/test_model.py compares them with
fairseq's forward). ``transformer_collab``'s encoder and decoder inherit them; :func:`make_sync_free` gives them to
an already built fairseq transformer (``--task translation_fast`` does, for its training step).
"""

import types
from typing import Dict, List, Optional

import torch
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from torch import Tensor


class SyncFreeEncoderMixin:
    def forward_scriptable(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
    ):
        """fairseq's encoder forward (same inputs and output dict: src_tokens B x S; encoder_out S x B x C), without
        its ``if encoder_padding_mask.any()``: every layer gets the padding mask, all False where there is no padding,
        which computes the same. fairseq evaluates that condition before each layer, a host sync on the GPU that
        waits for the previous layer to finish (tests/test_model.py compares the two)."""
        encoder_padding_mask = src_tokens.eq(self.padding_idx)
        x, encoder_embedding = self.forward_embedding(src_tokens, token_embeddings)
        x = (x * (1 - encoder_padding_mask.unsqueeze(-1).type_as(x))).transpose(0, 1)  # B x S x C -> S x B x C
        encoder_states: List[Tensor] = [x] if return_all_hiddens else []
        fc_results: List[Optional[Tensor]] = []
        for layer in self.layers:
            out = layer(x, encoder_padding_mask=encoder_padding_mask)
            x, fc_result = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
            if return_all_hiddens and not torch.jit.is_scripting():
                encoder_states.append(x)
                fc_results.append(fc_result)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        src_lengths = src_tokens.ne(self.padding_idx).sum(dim=1, dtype=torch.int32).reshape(-1, 1).contiguous()
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [encoder_padding_mask],
            "encoder_embedding": [encoder_embedding],
            "encoder_states": encoder_states,
            "fc_results": fc_results,
            "src_tokens": [],
            "src_lengths": [src_lengths],
        }


class SyncFreeDecoderMixin:
    def extract_features_scriptable(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]],
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        """fairseq's decoder features (prev_output_tokens B x T -> B x T x C and {"attn", "inner_states"}), without
        its ``if prev_output_tokens.eq(pad).any()``, a host sync on the GPU that waits for the encoder to finish:
        outside incremental decoding every layer gets the padding mask, all False where there is none, which computes
        the same; a decoding step's one token is never padding, and gets none, as in fairseq."""
        alignment_layer = self.num_layers - 1 if alignment_layer is None else alignment_layer
        enc = encoder_out["encoder_out"][0] if encoder_out is not None and encoder_out["encoder_out"] else None
        has_padding = encoder_out is not None and len(encoder_out["encoder_padding_mask"]) > 0
        padding_mask = encoder_out["encoder_padding_mask"][0] if has_padding else None
        positions = None
        if self.embed_positions is not None:
            positions = self.embed_positions(prev_output_tokens, incremental_state=incremental_state)
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
            positions = positions[:, -1:] if positions is not None else None
        x = self.embed_scale * self.embed_tokens(prev_output_tokens.contiguous())
        if self.quant_noise is not None:
            x = self.quant_noise(x)
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        if positions is not None:
            x += positions
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout_module(x).transpose(0, 1)  # B x T x C -> T x B x C
        self_attn_padding_mask: Optional[Tensor] = None
        if self.cross_self_attention or incremental_state is None:
            self_attn_padding_mask = prev_output_tokens.eq(self.padding_idx)
        attn: Optional[Tensor] = None
        inner_states: List[Optional[Tensor]] = [x]
        for idx, layer in enumerate(self.layers):
            causal = incremental_state is None and not full_context_alignment
            x, layer_attn, _ = layer(
                x,
                enc,
                padding_mask,
                incremental_state,
                self_attn_mask=self.buffered_future_mask(x) if causal else None,
                self_attn_padding_mask=self_attn_padding_mask,
                need_attn=bool(idx == alignment_layer),
                need_head_weights=bool(idx == alignment_layer),
            )
            inner_states.append(x)
            if layer_attn is not None and idx == alignment_layer:
                attn = layer_attn.float().to(x)
        if attn is not None:
            attn = (attn[:alignment_heads] if alignment_heads is not None else attn).mean(dim=0)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)  # T x B x C -> B x T x C
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        return x, {"attn": [attn], "inner_states": inner_states}


def has_sync_free_forward(model) -> Optional[bool]:
    """Do ``model``'s fairseq transformer encoder and decoder run the sync-free forward? None for other models."""
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if not isinstance(encoder, TransformerEncoderBase) or not isinstance(decoder, TransformerDecoderBase):
        return None
    encoder_forward = getattr(encoder.forward_scriptable, "__func__", None)
    decoder_forward = getattr(decoder.extract_features_scriptable, "__func__", None)
    return encoder_forward is SyncFreeEncoderMixin.forward_scriptable and \
        decoder_forward is SyncFreeDecoderMixin.extract_features_scriptable  # fmt: skip


def make_sync_free(model) -> bool:
    """Give ``model``'s fairseq transformer encoder and decoder the sync-free forward (instance methods, so nothing
    changes for other models). Returns whether both now have it."""
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if not isinstance(encoder, TransformerEncoderBase) or not isinstance(decoder, TransformerDecoderBase):
        return False
    if not isinstance(encoder, SyncFreeEncoderMixin):
        encoder.forward_scriptable = types.MethodType(SyncFreeEncoderMixin.forward_scriptable, encoder)
    if not isinstance(decoder, SyncFreeDecoderMixin):
        decoder.extract_features_scriptable = types.MethodType(
            SyncFreeDecoderMixin.extract_features_scriptable, decoder
        )
    return True
