"""Decoding over caches allocated once per batch, for fairseq's transformer decoder and ``transformer_collab``'s.

fairseq's incremental decoding grows every self-attention cache by concatenation at each step and keeps the encoder
side once per hypothesis (beam times the sentence's). Here each layer's caches are allocated once per batch at the
longest output: the self-attention keys and values are written in place at the step's position and attended up to a
length bucket (positions after the step masked), and the encoder side is kept once per sentence, the K hypotheses of
a sentence attending to it together. A collaborative layer caches its shared keys once, with the content bias folded
in (N x L x (D_k + H)), not per head: the smaller cache the paper's key dimension buys. A self-attention step's
projections are one GEMM (the layer's own stacked weights). Every operator of a step has shapes fixed by (batch,
bucket), and the step number is a tensor, so a step can be captured as a CUDA graph (``cuda_graphs.py``); batches of
one shape reuse the buffers.

Shapes: N = B*K rows (K hypotheses per sentence, in sentence order), C model width, H heads, d = C/H, S source
length, L cache length, D_k the shared key width.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.modules import LearnedPositionalEmbedding, MultiheadAttention, SinusoidalPositionalEmbedding
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor

from collab_fairseq.modules.collab_projections import folded_mixing, kept, project_folded, stacked_linear
from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention

POSITIONS = (SinusoidalPositionalEmbedding, LearnedPositionalEmbedding, type(None))
BUCKET = 32  # attended lengths are multiples of this (fairseq2's beam search lost time reordering whole caches)


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
    """One attention layer's caches and its step. Keys per head (fairseq's MultiheadAttention, concatenated heads:
    N x H x L x d_k) or, for collaborative heads, the shared keys with the content bias folded in as the layer folds
    them when decoding (collab_projections.project_folded: N x L x (D_k + H)); values N x H x L x d.

    ``constants``: what the steps compute from the weights alone (stacked projection weights, the scaled mixing),
    made at the first step (this layer's own: collab_projections keys some of them by dtype only)."""

    def __init__(self, attn):
        self.attn = attn
        self.constants: Dict = {}
        self.enc_keys = self.enc_values = self.enc_bias = None
        self.shared = isinstance(attn, CollaborativeMultiheadAttention) and attn.collaborative
        self.folded = self.shared and attn.content_bias is not None
        self.heads = attn.num_heads
        self.head_dim = attn.head_dim
        key_dim = attn.key_dim if isinstance(attn, CollaborativeMultiheadAttention) else attn.embed_dim
        self.key_width = key_dim + (self.heads if self.folded else 0) if self.shared else key_dim // self.heads

    def _mixing(self, dtype) -> Tensor:
        """Each head's query weights over the shared (and folded) key: H x D_k, or H x (D_k + H) when folded."""
        scaled = kept(self.constants, f"scaled_mixing_{dtype}", lambda: self.attn._scaled_mixing(dtype))
        return folded_mixing(scaled, self.constants) if self.folded else scaled

    def _self_projections(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """x: N x C -> queries (N x H x D_k(+H), or N x H x d_k scaled), keys (N x D_k(+H), or N x H x d_k),
        values N x H x d: one GEMM."""
        n = x.size(0)
        attn, row = self.attn, x.unsqueeze(0)  # 1 x N x C, time first as the projections take it
        if self.folded:
            q, k, v = project_folded(row, row, attn.q_proj, attn.k_proj, attn.v_proj, attn.content_bias,
                                     self.heads, self.constants)  # fmt: skip
            q, k, v = q[0], k[:, 0], v[:, :, 0]
        else:
            q, k, v = (t[0] for t in stacked_linear(row, [[attn.q_proj], [attn.k_proj], [attn.v_proj]], self.heads,
                                                    self.constants))  # fmt: skip
            v = v.view(n, self.heads, self.head_dim)
        if self.shared:
            return q.unsqueeze(1) * self._mixing(q.dtype), k, v
        return (q * attn.scaling).view(n, self.heads, -1), k.view(n, self.heads, -1), v

    # ------------------------------------------------------------------ self-attention
    def allocate(self, rows: int, length: int, like: Tensor, reuse: bool) -> None:
        """Caches for ``rows`` x ``length`` positions: new ones, or (``reuse``) the last batch's, zeroed."""
        if reuse:
            self.keys.zero_()
            self.values.zero_()
            return
        shape = (rows, length, self.key_width) if self.shared else (rows, self.heads, length, self.key_width)
        self.keys = like.new_zeros(shape)
        self.values = like.new_zeros(rows, self.heads, length, self.head_dim)

    def reorder(self, rows: Tensor, length: int) -> None:
        """Select the rows that go on, over the first ``length`` positions."""
        for cache, dim in ((self.keys, 1 if self.shared else 2), (self.values, 2)):
            part = cache.narrow(dim, 0, length)
            part.copy_(part.index_select(0, rows))

    def self_step(self, x: Tensor, position: Tensor, length: int, mask: Tensor) -> Tensor:
        """x: N x C, the step's input at ``position`` (a one-element tensor); attends to positions < ``length``
        (``mask``: additive, 1 x length, -inf after the step's position). Returns N x C."""
        n = x.size(0)
        q, k, v = self._self_projections(x)
        self.values.index_copy_(2, position, v.unsqueeze(2))
        if self.shared:
            self.keys.index_copy_(1, position, k.unsqueeze(1))
            scores = torch.bmm(q, self.keys[:, :length].transpose(1, 2))  # N x H x L
        else:
            self.keys.index_copy_(2, position, k.unsqueeze(2))
            scores = torch.matmul(q.unsqueeze(2), self.keys[:, :, :length].transpose(2, 3)).squeeze(2)  # N x H x L
        probs = _softmax(scores + mask, x)
        out = torch.matmul(probs.unsqueeze(2), self.values[:, :, :length]).view(n, -1)  # N x H*d
        return self.attn.out_proj(out)

    # ------------------------------------------------------------------ encoder-decoder attention
    def encode(self, encoder_out: Tensor, padding: Optional[Tensor], size: int, reuse: bool) -> None:
        """Keys, values, content bias and padding of the encoder's output (S x B x C), once per sentence, in buffers
        of ``size`` >= S source positions (those after S masked), the last batch's where ``reuse``."""
        enc = encoder_out.transpose(0, 1)  # B x S x C
        bsz, src_len, _ = enc.shape
        values = self.attn.v_proj(enc).view(bsz, src_len, self.heads, -1).transpose(1, 2)  # B x H x S x d
        keys = self.attn.k_proj(enc)
        keys = keys if self.shared else keys.view(bsz, src_len, self.heads, -1).transpose(1, 2)
        bias = torch.zeros(bsz, 1, 1, src_len, dtype=enc.dtype, device=enc.device)  # B x (1 | H) x 1 x S
        if padding is not None:
            bias = bias.masked_fill(padding.view(bsz, 1, 1, src_len), -math.inf)
        if self.folded:
            bias = bias + self.attn.content_bias(enc).transpose(1, 2).unsqueeze(2)
        self.enc_values = _into(self.enc_values if reuse else None, values, 2, size, 0.0)
        self.enc_keys = _into(self.enc_keys if reuse else None, keys, 1 if self.shared else 2, size, 0.0)
        self.enc_bias = _into(self.enc_bias if reuse else None, bias, 3, size, -math.inf)

    def cross_step(self, x: Tensor) -> Tensor:
        """x: N x C (N = B*K); each sentence's K hypotheses attend to its encoder output together. Returns N x C."""
        bsz = self.enc_values.size(0)
        beam = x.size(0) // bsz
        q = self.attn.q_proj(x)
        if self.shared:
            mixing = kept(self.constants, f"scaled_mixing_{q.dtype}", lambda: self.attn._scaled_mixing(q.dtype))
            q = q.unsqueeze(1) * mixing
        else:
            q = q * self.attn.scaling
        q = q.view(bsz, beam, self.heads, -1)
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
        return {name: t.numel() * t.element_size() for name, t in (("keys", self.keys), ("values", self.values))}


class StaticCacheDecoding:
    """``start`` / ``step`` / ``reorder`` (the search's decoding interface) of one fairseq transformer-style model
    over static caches. ``buckets``: False attends to exactly the positions decoded so far (the CPU default: closest
    to fairseq's arithmetic); True to the next multiple of BUCKET, so a run has a few step shapes (CUDA graphs), and a
    step reorders and attends to at most BUCKET - 1 positions that are not decoded yet."""

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
        self.shape = None
        self.weights: Optional[List] = None  # (address, version) of each parameter at the last batch

    def start(self, net_input: Dict[str, Tensor], beam: int, max_len: int) -> bool:
        """Encode the batch and make its caches. With ``buckets``, the source positions are rounded up to a multiple
        of 16, and a batch of the same shape as the last (rows, output and source positions) reuses its buffers,
        and so the CUDA graphs recorded on them, unless a parameter has changed since (the constants made from the
        weights are then made again); returns whether it did."""
        weights = [(p.data_ptr(), p._version) for p in self.model.parameters()]
        if weights != self.weights:  # trained (validation BLEU), moved or cast since the last batch: start afresh
            self.weights, self.shape = weights, None
            for _, self_attn, cross_attn in self.layers:
                self_attn.constants.clear()
                cross_attn.constants.clear()
        encoder_out = self.model.encoder.forward_torchscript(net_input)
        enc = encoder_out["encoder_out"][0]
        padding = encoder_out["encoder_padding_mask"][0] if len(encoder_out["encoder_padding_mask"]) > 0 else None
        src_len = enc.size(0)
        size = -(-src_len // 16) * 16 if self.buckets else src_len
        shape = (enc.size(1) * beam, max_len + 1, size, enc.dtype, enc.device)
        reuse = self.buckets and shape == self.shape
        self.shape, self.length = shape, max_len + 1
        for _, self_attn, cross_attn in self.layers:
            self_attn.allocate(shape[0], self.length, enc, reuse)
            cross_attn.encode(enc, padding, size, reuse)
        if not reuse:
            self.positions = self._position_table(enc, self.length)
            self.steps = torch.arange(self.length, device=enc.device)
        self.pending = None
        return reuse

    def _position_table(self, like: Tensor, length: int) -> Optional[Tensor]:
        """Positional embedding of every output position (length x C), as incremental decoding adds them."""
        if self.decoder.embed_positions is None:
            return None
        tokens = torch.full((1, length), self.decoder.padding_idx + 1, dtype=torch.long, device=like.device)
        return self.decoder.embed_positions(tokens)[0].to(like.dtype)

    def attended_length(self, step: int) -> int:
        if not self.buckets:
            return step + 1
        return min(-(-(step + 1) // BUCKET) * BUCKET, self.length)

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


def _into(buffer: Optional[Tensor], value: Tensor, dim: int, size: int, fill: float) -> Tensor:
    """``value`` extended along ``dim`` to ``size`` with ``fill``: written into ``buffer`` (of that shape) if given,
    else into a new tensor."""
    if buffer is None:
        shape = list(value.shape)
        shape[dim] = size
        buffer = value.new_full(shape, fill)
    else:
        buffer.narrow(dim, value.size(dim), size - value.size(dim)).fill_(fill)
    buffer.narrow(dim, 0, value.size(dim)).copy_(value)
    return buffer


def _sublayer(layer, norm, x: Tensor, fn) -> Tensor:
    """fairseq's residual block: pre- or post-norm by ``layer.normalize_before``; residual + f(x)."""
    if layer.normalize_before:
        return layer.residual_connection(fn(norm(x)), x)
    return norm(layer.residual_connection(fn(x), x))
