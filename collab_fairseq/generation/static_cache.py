"""Decoding over caches allocated once per batch, for fairseq's transformer decoder and ``transformer_collab``'s.

fairseq's incremental decoding grows every self-attention cache by concatenation at each step and keeps the encoder
side once per hypothesis (beam times the sentence's). Here each layer's caches are allocated once per batch at the
longest output: the self-attention keys and values are written in place at the step's position and attended up to a
length bucket (positions after the step masked), and the encoder side is kept once per sentence, the K hypotheses of
a sentence attending to it together. A collaborative layer caches its shared keys once (N x L x D_k) and its content
bias (N x H x L), not per head: the smaller cache the paper's key dimension buys. Every operator of a step has shapes
fixed by (batch, bucket), and the step number is a tensor, so a step can be captured as a CUDA graph
(``cuda_graphs.py``).

Shapes: N = B*K rows (K hypotheses per sentence, in sentence order), C model width, H heads, d = C/H, S source
length, L cache length, D_k the shared key width.
"""

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.modules import LearnedPositionalEmbedding, MultiheadAttention, SinusoidalPositionalEmbedding
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor

from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention

POSITIONS = (SinusoidalPositionalEmbedding, LearnedPositionalEmbedding, type(None))


def unsupported_decoder(model) -> Optional[str]:
    """Why ``model``'s decoder cannot decode over static caches (fairseq's incremental decoding still can), or None."""
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, TransformerDecoderBase):
        return f"decoder {type(decoder).__name__} is not fairseq's TransformerDecoder"
    checks = [
        (decoder.adaptive_softmax is not None, "adaptive softmax"),
        (decoder.cross_self_attention, "cross-self-attention"),
        (decoder.quant_noise is not None, "quant-noise on the embeddings"),
        (not isinstance(decoder.embed_positions, POSITIONS), "positional embeddings other than fairseq's"),
    ]  # fmt: skip
    for layer in decoder.layers:
        checks += [
            (type(layer).forward is not TransformerDecoderLayerBase.forward, f"decoder layer {type(layer).__name__}"),
            (layer.encoder_attn is None, "decoder layers without encoder attention"),
            (any(getattr(layer, n, None) is not None for n in ("attn_ln", "ffn_layernorm", "w_resid", "c_attn")),
             "--scale-attn / --scale-fc / --scale-resid / --scale-heads"),
        ]  # fmt: skip
        for attn in (layer.self_attn, layer.encoder_attn):
            if attn is not None and not isinstance(attn, (MultiheadAttention, CollaborativeMultiheadAttention)):
                checks.append((True, f"attention {type(attn).__name__}"))
            elif isinstance(attn, MultiheadAttention):
                checks.append((attn.bias_k is not None or attn.add_zero_attn, "--add-bias-kv / --add-zero-attn"))
    for failed, name in checks:
        if failed:
            return name
    return None


def _softmax(scores: Tensor, like: Tensor) -> Tensor:
    """fairseq's attention softmax: in float32, then back to the model's type."""
    return torch.softmax(scores.float(), dim=-1).type_as(like)


class AttentionCache:
    """One attention layer's caches and its step. Per-head keys (fairseq's MultiheadAttention, concatenated heads:
    N x H x L x d_k) or, for collaborative heads, the shared keys (N x L x D_k) and the content bias (N x H x L)."""

    def __init__(self, attn):
        self.attn = attn
        self.shared = isinstance(attn, CollaborativeMultiheadAttention) and attn.collaborative
        self.heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.key_dim = attn.key_dim if isinstance(attn, CollaborativeMultiheadAttention) else attn.embed_dim
        if self.shared:
            self.mixing = attn.mixing_matrix() * attn.scaling  # H x D_k
            self.content_bias = attn.content_bias

    def _queries(self, x: Tensor) -> Tensor:
        """x: N x C -> N x H x D_k (shared keys: each head's mixed query) or N x H x d_k (scaled, per head)."""
        q = self.attn.q_proj(x)
        if self.shared:
            return q.unsqueeze(1) * self.mixing.to(q.dtype)
        return (q * self.attn.scaling).view(x.size(0), self.heads, -1)

    def _bias(self, y: Tensor) -> Optional[Tensor]:
        """Content bias of keys y (... x C): ... x H, or None."""
        return self.content_bias(y) if self.shared and self.content_bias is not None else None

    # ------------------------------------------------------------------ self-attention
    def allocate(self, rows: int, length: int, like: Tensor) -> None:
        keys = (rows, length, self.key_dim) if self.shared else (rows, self.heads, length, self.key_dim // self.heads)
        self.keys = like.new_zeros(keys)
        self.values = like.new_zeros(rows, self.heads, length, self.head_dim)
        self.bias = like.new_zeros(rows, self.heads, length) if self._has_bias() else None

    def _has_bias(self) -> bool:
        return self.shared and self.content_bias is not None

    def reorder(self, rows: Tensor, length: int) -> None:
        """Select the rows that go on, over the first ``length`` positions."""
        for name in ("keys", "values", "bias"):
            cache = getattr(self, name)
            if cache is None:
                continue
            dim = 1 if (name == "keys" and self.shared) else 2
            part = cache.narrow(dim, 0, length)
            part.copy_(part.index_select(0, rows))

    def self_step(self, x: Tensor, position: Tensor, length: int, mask: Tensor) -> Tensor:
        """x: N x C, the step's input at ``position`` (a one-element tensor); attends to positions < ``length``
        (``mask``: additive, 1 x length, -inf after the step's position). Returns N x C."""
        n = x.size(0)
        k, v = self.attn.k_proj(x), self.attn.v_proj(x).view(n, self.heads, 1, self.head_dim)
        self.values.index_copy_(2, position, v)
        if self.shared:
            self.keys.index_copy_(1, position, k.unsqueeze(1))
            if self.bias is not None:
                self.bias.index_copy_(2, position, self._bias(x).unsqueeze(2))
            keys = self.keys[:, :length]  # N x L x D_k
            scores = torch.bmm(self._queries(x), keys.transpose(1, 2))  # N x H x L
            if self.bias is not None:
                scores = scores + self.bias[:, :, :length]
        else:
            self.keys.index_copy_(2, position, k.view(n, self.heads, 1, -1))
            keys = self.keys[:, :, :length]  # N x H x L x d_k
            scores = torch.matmul(self._queries(x).unsqueeze(2), keys.transpose(2, 3)).squeeze(2)  # N x H x L
        probs = _softmax(scores + mask, x)
        out = torch.matmul(probs.unsqueeze(2), self.values[:, :, :length]).view(n, -1)  # N x H*d
        return self.attn.out_proj(out)

    # ------------------------------------------------------------------ encoder-decoder attention
    def encode(self, encoder_out: Tensor, padding: Optional[Tensor]) -> None:
        """Keys, values, content bias and padding of the encoder's output (S x B x C), once per sentence."""
        enc = encoder_out.transpose(0, 1)  # B x S x C
        bsz, src_len, _ = enc.shape
        self.enc_values = self.attn.v_proj(enc).view(bsz, src_len, self.heads, -1).transpose(1, 2)  # B x H x S x d
        k = self.attn.k_proj(enc)
        self.enc_keys = k if self.shared else k.view(bsz, src_len, self.heads, -1).transpose(1, 2)
        bias = torch.zeros(bsz, 1, 1, src_len, dtype=enc.dtype, device=enc.device)  # B x (1 | H) x 1 x S
        if padding is not None:
            bias = bias.masked_fill(padding.view(bsz, 1, 1, src_len), -math.inf)
        content = self._bias(enc)
        if content is not None:
            bias = bias + content.transpose(1, 2).unsqueeze(2)
        self.enc_bias = bias

    def cross_step(self, x: Tensor) -> Tensor:
        """x: N x C (N = B*K); each sentence's K hypotheses attend to its encoder output together. Returns N x C."""
        bsz = self.enc_values.size(0)
        beam = x.size(0) // bsz
        q = self._queries(x).view(bsz, beam, self.heads, -1)
        if self.shared:  # B x K*H x D_k against B x S x D_k
            scores = torch.bmm(q.view(bsz, beam * self.heads, -1), self.enc_keys.transpose(1, 2))
            scores = scores.view(bsz, beam, self.heads, -1).transpose(1, 2)  # B x H x K x S
        else:
            scores = torch.matmul(q.transpose(1, 2), self.enc_keys.transpose(2, 3))  # B x H x K x S
        probs = _softmax(scores + self.enc_bias, x)
        out = torch.matmul(probs, self.enc_values)  # B x H x K x d
        return self.attn.out_proj(out.transpose(1, 2).reshape(x.size(0), -1))

    def cache_bytes(self) -> Dict[str, int]:
        """Bytes of this layer's self-attention cache: keys (with the content bias) and values."""
        keys = self.keys.numel() + (self.bias.numel() if self.bias is not None else 0)
        return {"keys": keys * self.keys.element_size(), "values": self.values.numel() * self.values.element_size()}


class StaticCacheDecoding:
    """``start`` / ``step`` / ``reorder`` (the search's decoding interface) of one fairseq transformer-style model
    over static caches. ``buckets``: False attends to exactly the positions decoded so far (the CPU default: closest
    to fairseq's arithmetic); True to the next power of two (>= 16), so a run has a few step shapes (CUDA graphs)."""

    def __init__(self, model, temperature: float = 1.0, buckets: bool = False):
        reason = unsupported_decoder(model)
        if reason is not None:
            raise ValueError(f"static caches do not support {reason}")
        self.model = model
        self.decoder = model.decoder
        self.temperature = temperature
        self.buckets = buckets
        self.layers = [(layer, AttentionCache(layer.self_attn), AttentionCache(layer.encoder_attn)) for layer in
                       self.decoder.layers]  # fmt: skip
        self.pending: Optional[Tensor] = None

    def start(self, net_input: Dict[str, Tensor], beam: int, max_len: int) -> None:
        encoder_out = self.model.encoder.forward_torchscript(net_input)
        enc = encoder_out["encoder_out"][0]
        padding = encoder_out["encoder_padding_mask"][0] if len(encoder_out["encoder_padding_mask"]) > 0 else None
        rows = enc.size(1) * beam
        self.length = max_len + 1
        for _, self_attn, cross_attn in self.layers:
            self_attn.allocate(rows, self.length, enc)
            cross_attn.encode(enc, padding)
        self.positions = self._position_table(enc, max_len + 1)
        self.steps = torch.arange(self.length, device=enc.device)
        self.pending = None

    def _position_table(self, like: Tensor, length: int) -> Optional[Tensor]:
        """Positional embedding of every output position (length x C), as incremental decoding adds them."""
        if self.decoder.embed_positions is None:
            return None
        tokens = torch.full((1, length), self.decoder.padding_idx + 1, dtype=torch.long, device=like.device)
        return self.decoder.embed_positions(tokens)[0].to(like.dtype)

    def attended_length(self, step: int) -> int:
        if not self.buckets:
            return step + 1
        return min(max(16, 1 << step.bit_length()), self.length)

    def reorder(self, rows: Tensor) -> None:
        self.pending = rows  # applied by the next step, over its attended length

    def step(self, tokens: Tensor, step: int) -> Tensor:
        position = self.steps[step : step + 1]
        return self.step_at(tokens[:, -1], position, self.attended_length(step), self.pending)

    def step_at(self, token: Tensor, position: Tensor, length: int, rows: Optional[Tensor]) -> Tensor:
        """One decoding step with fixed shapes: token (N), position (1, a tensor), attended length, the rows to
        continue from (N, or None). Returns log-probabilities N x V (float32)."""
        decoder = self.decoder
        if rows is not None:
            for _, self_attn, _ in self.layers:
                self_attn.reorder(rows, length)
        x = decoder.embed_scale * decoder.embed_tokens(token)
        if decoder.project_in_dim is not None:
            x = decoder.project_in_dim(x)
        if self.positions is not None:
            x = x + self.positions.index_select(0, position)
        if decoder.layernorm_embedding is not None:
            x = decoder.layernorm_embedding(x)
        steps = self.steps[:length]
        mask = torch.zeros(1, length, dtype=torch.float32, device=x.device).masked_fill(steps > position, -math.inf)
        for layer, self_attn, cross_attn in self.layers:
            x = _sublayer(
                layer, layer.self_attn_layer_norm, x, lambda y: self_attn.self_step(y, position, length, mask)
            )
            x = _sublayer(layer, layer.encoder_attn_layer_norm, x, cross_attn.cross_step)
            x = _sublayer(layer, layer.final_layer_norm, x, lambda y: layer.fc2(layer.activation_fn(layer.fc1(y))))
        if decoder.layer_norm is not None:
            x = decoder.layer_norm(x)
        if decoder.project_out_dim is not None:
            x = decoder.project_out_dim(x)
        logits = decoder.output_layer(x)
        if self.temperature != 1.0:
            logits = logits.div_(self.temperature)
        return F.log_softmax(logits.float(), dim=-1)

    def cache_bytes(self) -> Dict[str, int]:
        """Bytes of the self-attention caches of all layers: keys (with content biases) and values."""
        total = {"keys": 0, "values": 0}
        for _, self_attn, _ in self.layers:
            for name, size in self_attn.cache_bytes().items():
                total[name] += size
        return total


def _sublayer(layer, norm, x: Tensor, fn) -> Tensor:
    """fairseq's residual block: pre- or post-norm by ``layer.normalize_before``; residual + f(x)."""
    if layer.normalize_before:
        return layer.residual_connection(fn(norm(x)), x)
    return norm(layer.residual_connection(fn(x), x))


__all__: List[str] = ["StaticCacheDecoding", "unsupported_decoder"]
