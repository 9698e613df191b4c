"""Attention kernels of :class:`CollaborativeMultiheadAttention`: one contract, one selection function.

Every kernel computes, for each head h, softmax(q_h . k + content_bias_h + masks) @ v_h, from

    queries           B x Hq x T x d    Hq = 1: the shared queries of collaborative heads, which ``mixing`` turns into
                                        each head's; Hq = H: each head's own queries (concatenated heads)
    mixing            H x d or None     head h's query is queries * mixing[h] * mixing_scale (None when Hq = H)
    keys              B x Hk x S x d    Hk = 1: one key matrix for all heads (collaborative), else Hk = H
    values            B x H x S x d_v
    content_bias      B x H x S         added to every score of key y in head h, or None
    key_padding_mask  B x S             bool, True at padding, or None
    attn_mask         T x S             additive float (-inf = masked) or bool (True = masked), or None
    dropout_p         float             attention dropout (0 outside training)
    mixing_scale      float (keyword)   the attention scaling, which a kernel folds into a product it makes anyway

and returns B x H x T x d_v, or None where it cannot run these inputs. :func:`kernel_preferences` turns the layer's
``--collab-attention-kernel`` into the kernels to try in order; the last of each list runs any input.

Why each kernel is here (timings: results/performance/README.md):

    bmm      the reference: one GEMM of all heads' queries against the shared keys, then softmax; ``auto`` on the CPU
    mixgemm  bmm's arithmetic with the per-head queries made by one GEMM with the mixing matrix, token-major scores:
             the fastest training step at MT lengths on an H100 (``auto`` on CUDA below LONG_SEQUENCE keys and for
             every decoding step)
    fused    this package's Triton kernel (fused_collab_attention.py), forward and backward, writing neither per-head
             queries nor scores: the fastest at D_k 128 from 1,024 tokens and the least memory (``auto`` from
             LONG_SEQUENCE keys; CUDA, widths <= 128, no mask but the future mask)
    folded   torch's fused attention with no mask tensor, the content bias and padding folded into extra key
             dimensions: memory close to fairseq's layer (``auto``'s choice where ``fused`` cannot run)
    sdpa     torch's fused attention with the content bias and padding as a float mask: the fastest one layer at
             1,024 tokens (bf16 H100: 1.10x / 1.17x fairseq's at D_k 128 / 64, against fused's 0.99x / 0.90x; fp16
             H200 likewise), at 1.5-1.8x fairseq's memory; opt-in
    flash    folded with queries, keys and values zero-padded to one width, so that torch's flash attention runs:
             the fastest one layer at D_k 64 and 4,096 tokens (1.54x fairseq's against fused's 1.32x, bf16 H100);
             opt-in
"""

import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from torch import Tensor

# key value of the folded bias column at padding: finite, so no -inf * 0 in the backward through the keys,
# yet the padded keys' scores are ~-6e4, whose exp is exactly 0; fits fp16 (max 65504)
FOLDED_PADDING_KEY = -6.0e4
FLASH_MAX_WIDTH = 256  # the widest queries, keys and values torch's flash attention takes
LONG_SEQUENCE = 512  # from this many keys ``auto`` takes ``fused`` on CUDA
KERNEL_NAMES = ["auto", "bmm", "mixgemm", "fused", "folded", "sdpa", "flash"]


def kernel_preferences(kernel: str, on_cuda: bool, tgt_len: int, src_len: int) -> List[str]:
    """The kernels to try, in order, for the layer's ``kernel`` choice. ``auto``: ``bmm`` on the CPU (the reference,
    and the kernel CPU results were measured with); on CUDA ``mixgemm`` below LONG_SEQUENCE keys and for every
    decoding step (a long-sequence kernel would read or copy the whole key cache per head), ``fused`` from there on,
    then ``folded`` (near-linear memory). A named kernel is tried first, then ``bmm``."""
    if kernel == "auto":
        if not on_cuda:
            return ["bmm"]
        return ["mixgemm", "bmm"] if tgt_len == 1 or src_len < LONG_SEQUENCE else ["fused", "folded"]
    return [kernel] if kernel == "bmm" else [kernel, "bmm"]


def attend(preferences: List[str], *inputs, mixing_scale: float = 1.0) -> Tensor:
    """The output of the first kernel of ``preferences`` that runs ``inputs`` (the contract's, in its order)."""
    for name in preferences:
        out = KERNELS[name](*inputs, mixing_scale=mixing_scale)
        if out is not None:
            return out
    raise ValueError(f"no kernel of {preferences} runs these inputs")


def per_head_queries(queries: Tensor, mixing: Optional[Tensor], mixing_scale: float = 1.0) -> Tensor:
    """B x H x T x d: each head's queries (as given where there is no mixing). With T > 1 the shared queries are made
    dense first, so the product comes out B x H x T x d in memory and the score GEMM reads it as a view."""
    if mixing is None:
        return queries
    if queries.size(2) > 1:
        queries = queries.contiguous()
    return queries * (mixing if mixing_scale == 1.0 else mixing * mixing_scale)[None, :, None, :]


def attention_scores(queries: Tensor, keys: Tensor, bias: Optional[Tensor]) -> Tensor:
    """q . k (+ bias): B x H x T x S. Shared keys (Hk = 1) take all heads' queries in one batched GEMM
    ((B, H*T, d) @ (B, d, S)): the keys are never copied per head."""
    bsz, heads, tgt_len, _ = queries.shape
    if keys.size(1) == 1:
        flat = torch.bmm(queries.reshape(bsz, heads * tgt_len, -1), keys.squeeze(1).transpose(1, 2))
        scores = flat.view(bsz, heads, tgt_len, -1)
    else:
        scores = torch.matmul(queries, keys.transpose(-1, -2))
    return scores if bias is None else scores + bias


def score_bias(content_bias, key_padding_mask, attn_mask, dtype) -> Optional[Tensor]:
    """Content bias + padding + attention mask as one additive float tensor (B|1 x H|1 x T|1 x S), or None."""
    bias = None if content_bias is None else content_bias.unsqueeze(2).to(dtype)  # B x H x 1 x S
    if key_padding_mask is not None:
        pad = key_padding_mask.to(torch.bool)[:, None, None, :]
        if bias is None:
            bias = torch.zeros(pad.shape, dtype=dtype, device=pad.device)
        bias = bias.masked_fill(pad, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
                attn_mask, float("-inf")
            )
        attn_mask = attn_mask.to(dtype)
        bias = attn_mask if bias is None else bias + attn_mask
    return bias[None, None] if bias is not None and bias.dim() == 2 else bias


def explicit_attention(
    queries, mixing, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, mixing_scale=1.0,
    onnx_trace=False,
) -> Tuple[Tensor, Tensor]:  # fmt: skip
    """``bmm``, also returning the attention probabilities (float32 softmax): (B x H x T x d_v, B x H x T x S)."""
    queries = per_head_queries(queries, mixing, mixing_scale)
    scores = attention_scores(queries, keys, score_bias(content_bias, key_padding_mask, attn_mask, queries.dtype))
    probs_float = utils.softmax(scores, dim=-1, onnx_trace=onnx_trace)
    probs = probs_float.type_as(scores)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, values), probs_float


def bmm_attention(*inputs, mixing_scale=1.0) -> Tensor:
    return explicit_attention(*inputs, mixing_scale=mixing_scale)[0]


def mixgemm_attention(
    queries, mixing, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, mixing_scale=1.0
) -> Optional[Tensor]:
    """``bmm``'s arithmetic for collaborative heads, token-major (None for concatenated heads).

    The per-head queries q_t * m_h come out of one GEMM of the shared queries with the stacked
    [diag(m_1); ...; diag(m_H)] (H*D x D), already in the B x (T*H) x D layout the score GEMM reads, where ``bmm``
    makes them by a broadcast product whose forward and two backward reductions are elementwise passes over H*D
    values per token. The scores come out B x T x H x S; only the probabilities are transposed for P @ V, a copy as
    large as the scores, so at long lengths this takes more memory than ``bmm``.
    """
    if mixing is None:
        return None
    shared, keys = queries.squeeze(1), keys.squeeze(1)  # B x T x D, B x S x D
    bsz, tgt_len, dim = shared.shape
    heads = mixing.size(0)
    if tgt_len == 1:  # a decoding step: H x D values per sentence, where one product is cheaper than a GEMM
        heads_queries = shared * (mixing if mixing_scale == 1.0 else mixing * mixing_scale)
    else:  # the scale rides on a constant identity, so that scaling costs no product of its own
        weight = (mixing.unsqueeze(1) * scaled_identity(dim, mixing.dtype, mixing.device, mixing_scale)).view(-1, dim)
        heads_queries = F.linear(shared, weight).view(bsz, tgt_len * heads, dim)
    scores = torch.bmm(heads_queries, keys.transpose(1, 2)).view(bsz, tgt_len, heads, keys.size(1))
    bias = score_bias(content_bias, key_padding_mask, attn_mask, scores.dtype)
    if bias is not None:
        scores = scores + bias.transpose(1, 2)  # B|1 x H|1 x T|1 x S -> the scores' B x T x H x S
    probs = utils.softmax(scores, dim=-1).type_as(scores)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs.transpose(1, 2), values)


@functools.lru_cache(maxsize=16)
def scaled_identity(dim: int, dtype: torch.dtype, device: torch.device, scale: float) -> Tensor:
    """scale * I (dim x dim): a constant of every training step's mixing GEMM, made once per configuration."""
    return torch.eye(dim, dtype=dtype, device=device) * scale


def fused_attention(
    queries, mixing, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, mixing_scale=1.0
) -> Optional[Tensor]:
    """The Triton kernel of fused_collab_attention.py, or None where it cannot run: concatenated heads, no Triton
    (CPU-only torch), CPU tensors outside Triton's interpreter, widths over 128, a mask other than the future mask."""
    if mixing is None:
        return None
    try:
        from collab_fairseq.modules import fused_collab_attention as fused
    except ImportError:
        return None
    shared = queries.squeeze(1)
    causal = None if attn_mask is None else is_future_mask(attn_mask)
    if not fused.supported(shared, values, causal, dropout_p):
        return None
    mixing = mixing if mixing_scale == 1.0 else mixing * mixing_scale
    return fused.fused_collab_attention(
        shared, mixing, keys.squeeze(1), values, content_bias, key_padding_mask, bool(causal), dropout_p
    )


def sdpa_attention(
    queries, mixing, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, mixing_scale=1.0
) -> Tensor:
    """torch's fused attention with the content bias, padding and attention mask as one float mask."""
    queries = per_head_queries(queries, mixing, mixing_scale)
    bsz, heads = queries.shape[:2]
    return F.scaled_dot_product_attention(
        queries,
        keys.expand(bsz, heads, -1, -1),
        values,
        attn_mask=score_bias(content_bias, key_padding_mask, attn_mask, queries.dtype),
        dropout_p=dropout_p,
        scale=1.0,
    )


def folded_attention(
    queries, mixing, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, mixing_scale=1.0,
    pad_values=False,
) -> Tensor:  # fmt: skip
    """torch's fused attention with no mask tensor.

    Every head's query gains a 1 and every key the head's content bias (FOLDED_PADDING_KEY at padding), zero-padded
    to a multiple of 8 dimensions, so q'.k' = q.k + c_h(y): scaled_dot_product_attention needs no mask and may pick
    its flash / efficient kernels. The future mask becomes ``is_causal``; any other mask stays a mask. The keys are
    copied per head here (d + 8 dims each), the price of folding a per-head bias in. ``pad_values`` (``flash``):
    queries, keys and values zero-padded to one width, which torch's flash attention needs (not over
    FLASH_MAX_WIDTH, which it does not take), the output cut back.
    """
    queries = per_head_queries(queries, mixing, mixing_scale)
    bsz, heads, _, width_q = queries.shape
    width = 8 - width_q % 8 if width_q % 8 else 8  # the bias column and zeros after it
    value_dim = values.size(-1)
    one_width = max(width_q + width, -(-value_dim // 8) * 8)
    padded = pad_values and value_dim != one_width and one_width <= FLASH_MAX_WIDTH
    if padded:  # queries and keys take more zeros only where the values are wider than them
        width = one_width - width_q
    column = queries.new_zeros(bsz, heads, keys.size(2)) if content_bias is None else content_bias.to(queries.dtype)
    if key_padding_mask is not None:
        column = column.masked_fill(key_padding_mask.to(torch.bool)[:, None, :], FOLDED_PADDING_KEY)
    extra_q = F.pad(queries.new_ones(queries.shape[:-1] + (1,)), (0, width - 1))
    extra_k = F.pad(column.unsqueeze(-1), (0, width - 1))
    causal = attn_mask is not None and is_future_mask(attn_mask)
    out = F.scaled_dot_product_attention(
        torch.cat([queries, extra_q], dim=-1),
        torch.cat([keys.expand(bsz, heads, -1, -1), extra_k.to(keys.dtype)], dim=-1),
        F.pad(values, (0, one_width - value_dim)) if padded else values,
        attn_mask=None if attn_mask is None or causal else score_bias(None, None, attn_mask, queries.dtype),
        dropout_p=dropout_p,
        is_causal=causal,
        scale=1.0,
    )
    return out[..., :value_dim] if padded else out


def flash_attention(*inputs, mixing_scale=1.0) -> Tensor:
    return folded_attention(*inputs, mixing_scale=mixing_scale, pad_values=True)


KERNELS = {
    "bmm": bmm_attention,
    "mixgemm": mixgemm_attention,
    "fused": fused_attention,
    "folded": folded_attention,
    "sdpa": sdpa_attention,
    "flash": flash_attention,
}


def mark_future_mask(attn_mask: Tensor) -> Tensor:
    """Tag ``attn_mask`` as the square future mask (-inf / True above the diagonal), so that :func:`is_future_mask`
    need not read its values (on a GPU that read would make the host wait). transformer_collab's decoder tags the
    mask it passes to its self-attention layers; returns the mask."""
    attn_mask.collab_future_mask = True
    return attn_mask


def is_future_mask(attn_mask: Tensor) -> bool:
    """Is ``attn_mask`` exactly the square future mask? Tagged masks (:func:`mark_future_mask`) are; any other is
    checked by its values."""
    if getattr(attn_mask, "collab_future_mask", False):
        return True
    if attn_mask.dim() != 2 or attn_mask.size(0) != attn_mask.size(1):
        return False
    blocked = attn_mask if attn_mask.dtype == torch.bool else torch.isinf(attn_mask) & (attn_mask < 0)
    above = torch.ones(attn_mask.shape, dtype=torch.bool, device=attn_mask.device).triu(1)
    if not torch.equal(blocked, above):
        return False
    return attn_mask.dtype == torch.bool or bool((attn_mask.masked_fill(blocked, 0) == 0).all())
