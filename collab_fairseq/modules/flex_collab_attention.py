"""Collaborative attention through torch's FlexAttention: the ``flex`` kernel (experimental).

Every head scores its own queries against the one shared key matrix, expanded to the heads as a view (no copy);
the content bias is added to the scores and padded keys are set to -inf by a score_mod, the future mask is a
block mask (whole blocks above the diagonal are skipped). FlexAttention compiles this into one kernel forward and
one backward (Triton on CUDA); the content bias's gradient comes out of the backward kernel too.

    queries           B x H x T x D    per-head queries, already scaled
    keys              B x S x D        the shared keys
    values            B x H x S x d_v
    content_bias      B x H x S        or None
    key_padding_mask  B x S            bool, True at padding, or None
    causal            bool             the future mask (T = S)

FlexAttention has no attention dropout, and on the CPU no backward; widths over MAX_WIDTH are left to other
kernels (FlexAttention's kernels keep a query block's full width on chip): :func:`supported` says where it runs.
"""

import functools
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

_BLOCK_MASKS: Dict[Tuple, BlockMask] = {}
MAX_WIDTH = 256


def supported(queries: Tensor, values: Tensor, dropout_p: float) -> bool:
    """Whether :func:`flex_collab_attention` can run: no attention dropout, widths up to MAX_WIDTH, and on the CPU
    no gradient asked for."""
    if dropout_p > 0 or max(queries.size(-1), values.size(-1)) > MAX_WIDTH:
        return False
    return queries.is_cuda or not (torch.is_grad_enabled() and queries.requires_grad)


def flex_collab_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    content_bias: Optional[Tensor],
    key_padding_mask: Optional[Tensor],
    causal: bool,
) -> Tensor:
    """softmax(q_h . k + c_h + masks) @ v_h for every head: B x H x T x d_v."""
    bsz, heads, tgt_len, _ = queries.shape
    src_len = keys.size(1)
    bias = content_bias.to(queries.dtype) if content_bias is not None else None
    padding = key_padding_mask.to(torch.bool) if key_padding_mask is not None else None

    def score_mod(score, b, h, q_idx, kv_idx):
        if bias is not None:
            score = score + bias[b, h, kv_idx]
        if padding is not None:
            score = torch.where(padding[b, kv_idx], -float("inf"), score)
        return score

    block_mask = _future_block_mask(tgt_len, src_len, queries.device) if causal else None
    # the CPU runs FlexAttention's reference (unfused) form: Inductor's CPU template for it fails to build here
    # with dynamic shapes (torch 2.13), and the CPU has no FlexAttention backward anyway
    attend = _compiled_flex() if queries.is_cuda else flex_attention
    return attend(
        queries,
        keys.unsqueeze(1).expand(bsz, heads, -1, -1),
        values,
        score_mod=score_mod,
        block_mask=block_mask,
        scale=1.0,
    )


def _future_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _future_block_mask(tgt_len: int, src_len: int, device) -> BlockMask:
    """The future mask as a block mask, made once per shape and device (it is the same for every batch)."""
    key = (tgt_len, src_len, str(device))
    if key not in _BLOCK_MASKS:
        if len(_BLOCK_MASKS) >= 64:
            _BLOCK_MASKS.clear()
        _BLOCK_MASKS[key] = create_block_mask(_future_mask, None, None, tgt_len, src_len, device=device)
    return _BLOCK_MASKS[key]


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    # FlexAttention's fast kernels come from torch.compile; shapes change with every batch and must not recompile
    return torch.compile(flex_attention, dynamic=True)
