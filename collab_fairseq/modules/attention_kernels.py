"""Attention kernels of :class:`CollaborativeMultiheadAttention`: the heads are already split, nothing is read
from the layer.

Every kernel computes, for each head h, softmax(q_h . k + content_bias_h + masks) @ v_h, from

    queries           B x H x T x d     per-head queries, already scaled (collaborative: the shared query
                                        times s * m_h, d = D_k)
    keys              B x Hk x S x d    Hk = 1: one key matrix for all heads (collaborative), else Hk = H
    values            B x H x S x d_v
    content_bias      B x H x S         added to every score of key y in head h, or None
    key_padding_mask  B x S             bool, True at padding, or None
    attn_mask         T x S             additive float (-inf = masked) or bool (True = masked), or None
    dropout_p         float             attention dropout (0 outside training)

and returns B x H x T x d_v. They differ in how: ``bmm`` writes the scores and probabilities (one GEMM of
all heads' queries against the shared keys), ``sdpa``, ``folded`` and ``flash`` call torch's fused attention.
Two more take the shared queries and the mixing matrix instead of per-head queries, so the layer calls them
itself: ``mixgemm`` (below: ``bmm``'s arithmetic with the mixing as a GEMM, token-major) and ``fused``
(modules/fused_collab_attention.py, Triton). ``auto`` (the default) picks one by device and length
(:func:`resolve_kernel`); for concatenated heads, and where ``fused`` cannot run, the layer takes
:func:`fallback_kernel` (``bmm``, or ``folded`` under ``auto``).
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from torch import Tensor

# key value of the folded bias column at padding: finite, so no -inf * 0 in the backward through the keys,
# yet the padded keys' scores are ~-6e4, whose exp is exactly 0; fits fp16 (max 65504)
FOLDED_PADDING_KEY = -6.0e4
FLASH_MAX_WIDTH = 256  # the widest queries, keys and values torch's flash attention takes


def attention_scores(queries: Tensor, keys: Tensor, bias: Optional[Tensor]) -> Tensor:
    """q . k (+ bias): B x H x T x S.

    Shared keys (Hk = 1) take all heads' queries in one batched GEMM ((B, H*T, d) @ (B, d, S)): the keys are
    never copied per head.
    """
    bsz, heads, tgt_len, _ = queries.shape
    if keys.size(1) == 1:
        flat = torch.bmm(queries.reshape(bsz, heads * tgt_len, -1), keys.squeeze(1).transpose(1, 2))
        scores = flat.view(bsz, heads, tgt_len, -1)
    else:
        scores = torch.matmul(queries, keys.transpose(-1, -2))
    return scores if bias is None else scores + bias


def score_bias(
    content_bias: Optional[Tensor], key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], dtype
) -> Optional[Tensor]:
    """Content bias + padding + attention mask as one additive float tensor (B|1 x H|1 x T|1 x S), or None."""
    bias = None
    if content_bias is not None:
        bias = content_bias.unsqueeze(2).to(dtype)  # B x H x 1 x S
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
    if bias is not None and bias.dim() == 2:
        bias = bias[None, None]
    return bias


def explicit_attention(
    queries, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, onnx_trace=False
) -> Tuple[Tensor, Tensor]:
    """The ``bmm`` kernel, also returning the attention probabilities (float32 softmax): (B x H x T x d_v,
    B x H x T x S)."""
    scores = attention_scores(queries, keys, score_bias(content_bias, key_padding_mask, attn_mask, queries.dtype))
    probs_float = utils.softmax(scores, dim=-1, onnx_trace=onnx_trace)
    probs = probs_float.type_as(scores)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, values), probs_float


def bmm_attention(queries, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p) -> Tensor:
    return explicit_attention(queries, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p)[0]


def sdpa_attention(queries, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p) -> Tensor:
    """torch's fused attention with the content bias, padding and attention mask as one float mask."""
    bsz, heads, _, _ = queries.shape
    return F.scaled_dot_product_attention(
        queries,
        keys.expand(bsz, heads, -1, -1),
        values,
        attn_mask=score_bias(content_bias, key_padding_mask, attn_mask, queries.dtype),
        dropout_p=dropout_p,
        scale=1.0,
    )


def folded_attention(
    queries, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, pad_values=False
) -> Tensor:
    """torch's fused attention with no mask tensor.

    Every head's query gains a 1 and every key the head's content bias (a large negative number at padding),
    zero-padded to a multiple of 8 dimensions, so q'.k' = q.k + c_h(y):
    scaled_dot_product_attention then needs no mask and may pick its flash/efficient kernels. The future mask
    becomes ``is_causal``; any other attention mask stays a mask. The keys are copied per head here (d + 8
    dims each), the price of folding a per-head bias in.

    ``pad_values`` (the ``flash`` kernel): queries, keys and values zero-padded to one width (the output cut back),
    because torch's flash attention needs one; without it torch takes its memory-efficient kernel, whose
    backward is slow at MT lengths for widths over 128 (results/performance.md). Not over FLASH_MAX_WIDTH, which
    flash attention does not take (there ``flash`` is ``folded``).
    """
    bsz, heads, _, _ = queries.shape
    src_len = keys.size(2)
    width = 8 - queries.size(-1) % 8 if queries.size(-1) % 8 else 8  # the bias column and zeros after it
    value_dim = values.size(-1)
    one_width = max(queries.size(-1) + width, -(-value_dim // 8) * 8)
    padded = pad_values and value_dim != one_width and one_width <= FLASH_MAX_WIDTH
    if padded:  # queries and keys take more zeros only where the values are wider than them
        width = one_width - queries.size(-1)
    if content_bias is None:
        column = queries.new_zeros(bsz, heads, src_len)
    else:
        column = content_bias.to(queries.dtype)
    if key_padding_mask is not None:
        column = column.masked_fill(key_padding_mask.to(torch.bool)[:, None, :], FOLDED_PADDING_KEY)
    extra_q = F.pad(queries.new_ones(queries.shape[:-1] + (1,)), (0, width - 1))
    extra_k = F.pad(column.unsqueeze(-1), (0, width - 1))
    mask, causal = None, False
    if attn_mask is not None:
        causal = is_future_mask(attn_mask)
        if not causal:
            mask = score_bias(None, None, attn_mask, queries.dtype)
    out = F.scaled_dot_product_attention(
        torch.cat([queries, extra_q], dim=-1),
        torch.cat([keys.expand(bsz, heads, -1, -1), extra_k.to(keys.dtype)], dim=-1),
        F.pad(values, (0, one_width - value_dim)) if padded else values,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=causal,
        scale=1.0,
    )
    return out[..., :value_dim] if padded else out


def flash_attention(queries, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p) -> Tensor:
    """The ``flash`` kernel: ``folded`` with queries, keys and values of one width (torch's flash attention)."""
    return folded_attention(
        queries, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, pad_values=True
    )


def mixing_gemm_attention(
    shared, mixing, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, mixing_scale=1.0
) -> Tensor:
    """The ``mixgemm`` kernel: ``bmm``'s arithmetic for collaborative heads, laid out token-major.

    shared   B x T x D    the shared queries (D = D_k)
    mixing   H x D        m_h, times ``mixing_scale`` (the attention scaling) where the kernel uses it
    keys     B x S x D    values, content_bias, masks, dropout_p and the result as for the other kernels

    The per-head queries q_t * m_h come out of one GEMM of the shared queries with the stacked
    [diag(m_1); ...; diag(m_H)] (H*D x D), already in the B x (T*H) x D layout the score GEMM reads. ``bmm`` builds
    them by a broadcast product over B x H x T x D, and that product and its two backward reductions are
    elementwise passes over H*D values per token; here they are GEMMs (and m's gradient the diagonals of the
    weight's, an H x D x D reduction).
    The scores come out B x T x H x S, and only the probabilities (H*S values per token, fewer than H*D at MT
    lengths) are transposed for P @ V. That copy is as large as the scores, so at long lengths this kernel needs
    more memory than ``bmm``; ``fused`` is the one for long sequences.
    """
    bsz, tgt_len, dim = shared.shape
    heads = mixing.size(0)
    if tgt_len == 1:  # a decoding step: H x D values per sentence, where one product is cheaper than a GEMM
        queries = shared * (mixing if mixing_scale == 1.0 else mixing * mixing_scale)  # B x 1 x D, H x D -> B x H x D
    else:
        # one GEMM with the stacked diag(m_h) (H*D x D; weight[h*D + d, d] = m[h, d] * scale), from a cached
        # identity that carries the scale (in the mixing's dtype), so scaling costs no product of its own
        identity = _identity(dim, mixing.dtype, mixing.device, mixing_scale)
        weight = (mixing.unsqueeze(1) * identity).view(heads * dim, dim)
        queries = F.linear(shared, weight).view(bsz, tgt_len * heads, dim)
    scores = torch.bmm(queries, keys.transpose(1, 2)).view(bsz, tgt_len, heads, keys.size(1))
    bias = score_bias(content_bias, key_padding_mask, attn_mask, scores.dtype)
    if bias is not None:
        scores = scores + bias.transpose(1, 2)  # B|1 x H|1 x T|1 x S -> the scores' B x T x H x S
    probs = utils.softmax(scores, dim=-1).type_as(scores)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs.transpose(1, 2), values)


_IDENTITIES: Dict[Tuple, Tensor] = {}


def _identity(dim: int, dtype, device, scale: float = 1.0) -> Tensor:
    """scale * torch.eye(dim), made once per (dim, dtype, device, scale): a constant of every training step's
    mixing GEMM."""
    key = (dim, dtype, device, scale)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = torch.eye(dim, dtype=dtype, device=device) * scale
    return _IDENTITIES[key]


def fused_attention(
    shared, mixing, keys, values, content_bias, key_padding_mask, attn_mask, dropout_p, mixing_scale=1.0
) -> Optional[Tensor]:
    """The ``fused`` kernel (modules/fused_collab_attention.py, Triton; arguments as for ``mixgemm``), or None
    where it cannot run: no Triton (CPU-only torch), CPU tensors outside Triton's interpreter, widths over 128,
    an attention mask other than the future mask. The layer then takes :func:`fallback_kernel`."""
    try:
        from collab_fairseq.modules import fused_collab_attention as fused
    except ImportError:
        return None
    causal = None if attn_mask is None else is_future_mask(attn_mask)
    if not fused.supported(shared, values, causal, dropout_p):
        return None
    if mixing_scale != 1.0:
        mixing = mixing * mixing_scale
    return fused.fused_collab_attention(
        shared, mixing, keys, values, content_bias, key_padding_mask, bool(causal), dropout_p
    )


KERNELS = {"bmm": bmm_attention, "sdpa": sdpa_attention, "folded": folded_attention, "flash": flash_attention}
# these take the shared queries (B x T x D_k) and the mixing matrix with the factor that scales it (the attention
# scaling), so the layer calls them itself; a None result means "cannot run these inputs", and the layer takes
# fallback_kernel(...)
SHARED_QUERY_KERNELS = {"fused": fused_attention, "mixgemm": mixing_gemm_attention}
KERNEL_NAMES = ["auto", *KERNELS, *SHARED_QUERY_KERNELS]

# ``auto`` on CUDA by number of keys (one layer, forward + backward, bf16, on an H100; results/performance.md,
# commit 90e9683): at MT lengths ``mixgemm`` trains fastest; from 1024 keys the Triton ``fused`` kernel is the
# fastest at D_k = 128, and at 64 ties ``flash`` within fairseq's memory at 1024 keys and trails it by 14 % at 4096,
# with the least memory of all. (``folded`` led at 4096 keys only while torch could take cuDNN's attention, which
# the package switches off: see attention_backends.py.)
LONG_SEQUENCE = 512


def resolve_kernel(kernel: str, on_cuda: bool, tgt_len: int, src_len: int) -> str:
    """The kernel that runs: ``kernel`` itself, or for ``auto``: ``bmm`` on the CPU (the reference, and the kernel
    CPU results were measured with); on CUDA ``mixgemm`` below LONG_SEQUENCE keys and for every decoding step (a
    long-sequence kernel would read or copy the whole key cache per head), ``fused`` from there on."""
    if kernel != "auto":
        return kernel
    if not on_cuda:
        return "bmm"
    if tgt_len == 1 or src_len < LONG_SEQUENCE:
        return "mixgemm"
    return "fused"


def fallback_kernel(kernel: str, resolved: str) -> str:
    """The :data:`KERNELS` entry that runs where ``resolved`` does not (concatenated heads, which the shared-query
    kernels do not take; ``fused`` refusing its inputs): ``auto``'s long-sequence choice falls back to ``folded``,
    which keeps memory near linear, anything else to ``bmm``."""
    if resolved in KERNELS:
        return resolved
    return "folded" if kernel == "auto" and resolved == "fused" else "bmm"


_FUTURE_MASKS: Dict[Tuple, Tuple[Tensor, bool]] = {}


def is_future_mask(attn_mask: Tensor) -> bool:
    """Is attn_mask exactly the square future mask (-inf / True above the diagonal, 0 / False elsewhere)?

    fairseq's decoder passes top-left T x T views of one cached future mask, and a top-left square block of a
    causal matrix is causal, so the values are checked once per base mask (checking them at every call would
    make the CPU wait for the GPU) and remembered per (address, shape, strides, version, dtype), holding the
    mask so that its memory cannot be reused by another tensor meanwhile.
    """
    if attn_mask.dim() != 2 or attn_mask.size(0) != attn_mask.size(1):
        return False
    base = attn_mask._base
    top_left_block = (
        base is not None
        and base.dim() == 2
        and base.size(0) == base.size(1)
        and attn_mask.storage_offset() == base.storage_offset()
        and attn_mask.stride() == base.stride()
    )
    mask = base if top_left_block else attn_mask
    key = (mask.data_ptr(), tuple(mask.shape), mask.stride(), mask._version, mask.dtype)
    if key not in _FUTURE_MASKS:
        blocked = mask if mask.dtype == torch.bool else torch.isinf(mask) & (mask < 0)
        above = torch.ones(mask.size(0), mask.size(0), dtype=torch.bool, device=mask.device).triu(1)
        causal = torch.equal(blocked, above)
        if causal and mask.dtype != torch.bool:
            causal = bool((mask.masked_fill(blocked, 0) == 0).all())
        if len(_FUTURE_MASKS) >= 16:
            _FUTURE_MASKS.clear()
        _FUTURE_MASKS[key] = (mask, causal)
    return _FUTURE_MASKS[key][1]
