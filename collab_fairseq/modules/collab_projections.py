"""The input projections of collaborative attention: functions of the layer's Linear modules, nothing else of it.

Projections that read the same input run as one GEMM of their stacked weights (:func:`stacked_linear`): queries,
keys, values and the content bias of self-attention, keys, values and content bias of cross-attention. Shapes: the
input is T x B x C (time first, fairseq's); the outputs are views of the one GEMM's output.

Decoding folds the content bias into the keys (:func:`project_folded`): the query gains H ones, the key the H
content-bias values, and head h's query row of the folded mixing [s M | I_H] picks its own, so q'_h . k' =
s (q * m_h) . k + c_h(y) with no cache entry, reorder or score addition for the bias.

``constants``: a decoding run's dict (kept beside its cache in fairseq's ``incremental_state``), where the stacked
weights and the scaled mixing are made once per run; None (training, validation) makes them at every call, for
autograd to see.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from collab_fairseq.modules.attention_kernels import FOLDED_PADDING_KEY

ONES = "ones"  # in a group of stacked_linear: H outputs equal to 1 (zero weights, a bias of 1)
Group = Sequence[Union[nn.Linear, str]]


def kept(constants: Optional[Dict], key: str, make: Callable[[], Tensor]):
    """``make()``, made once per decoding run and kept under ``key`` in its ``constants`` (made at every call
    without them)."""
    if constants is None:
        return make()
    if key not in constants:
        constants[key] = make()
    return constants[key]


def stacked_linear(x: Tensor, groups: List[Group], heads: int, constants=None) -> Tuple[Tensor, ...]:
    """One GEMM for groups of projections of ``x`` (T x B x C): one view per group, its projections' outputs side by
    side. Zero rows after a group make the next one start at a multiple of 8 outputs (16-byte aligned slices, as
    fp16 GEMMs and fused attention kernels need)."""
    sizes = [sum(heads if p == ONES else p.weight.size(0) for p in group) for group in groups]
    pads = [-size % 8 for size in sizes]
    key = "stacked_" + "_".join(p if p == ONES else str(id(p)) for group in groups for p in group)
    weight, bias = kept(constants, key, lambda: stacked_weight_and_bias(groups, pads, heads))
    widths, is_group = [], []
    for size, pad in zip(sizes, pads):
        widths += [size] + ([pad] if pad else [])
        is_group += [True] + ([False] if pad else [])
    # one split, not slices: its backward is one concatenation (a slice's writes a zero tensor of the full width)
    pieces = F.linear(x, weight, bias).split(widths, dim=-1)
    return tuple(piece for piece, group in zip(pieces, is_group) if group)


def stacked_weight_and_bias(groups: List[Group], pads: List[int], heads: int) -> Tuple[Tensor, Optional[Tensor]]:
    """What :func:`stacked_linear` multiplies by: rows in the groups' order, zero rows for the padding, zero bias for
    projections without one (None if none has one)."""
    like = next(p.weight for group in groups for p in group if p != ONES)
    weights, biases, size = [], [], 0  # biases: (first row, rows, bias) of the projections that have one
    for group, pad in zip(groups, pads):
        for p in group:
            ones = p == ONES
            n = heads if ones else p.weight.size(0)
            weights.append(like.new_zeros(n, like.size(1)) if ones else p.weight)
            if ones or p.bias is not None:
                biases.append((size, n, like.new_ones(n) if ones else p.bias))
            size = size + n  # not +=: while tracing, sizes are tensors, and += would move every start above
        if pad:
            weights.append(like.new_zeros(pad, like.size(1)))
            size = size + pad
    weight = torch.cat(weights)
    if not biases:
        return weight, None
    if len(biases) == 1:  # collaborative heads in training: only the values' projection has a bias; one op
        start, n, bias = biases[0]
        return weight, F.pad(bias, (start, size - start - n))
    parts, end = [], 0
    for start, n, bias in biases:
        parts += ([like.new_zeros(start - end)] if start > end else []) + [bias]
        end = start + n
    return weight, torch.cat(parts + ([like.new_zeros(size - end)] if size > end else []))


def joint_linear(x: Tensor, projections: List[nn.Linear], heads: int, stack: bool, constants=None):
    """Several Linear layers that read the same input, as one GEMM where ``stack`` (quant-noise layers need their
    own); returns their outputs."""
    if not stack or len(projections) == 1:
        return tuple(proj(x) for proj in projections)
    return stacked_linear(x, [[proj] for proj in projections], heads, constants)


def head_values(v: Tensor, heads: int) -> Tensor:
    """S x B x C -> B x H x S x d_v (a view)."""
    src_len, bsz, _ = v.shape
    return v.view(src_len, bsz, heads, -1).permute(1, 2, 0, 3)


def project(
    query: Tensor,
    key: Optional[Tensor],
    value: Optional[Tensor],
    q_proj: nn.Linear,
    k_proj: nn.Linear,
    v_proj: nn.Linear,
    content_bias: Optional[nn.Linear],
    heads: int,
    stack: bool,
    constants=None,
):
    """q: T x B x D_k; k: B x S x D_k; content bias: B x H x S (or None); v: B x H x S x d_v (k, v None without
    a key: cached encoder keys)."""
    kv_proj = [k_proj, v_proj] + ([content_bias] if content_bias is not None else [])
    if key is None:
        return q_proj(query), None, None, None
    if key is query and value is query:
        q, k, v, *c = joint_linear(query, [q_proj] + kv_proj, heads, stack, constants)
    else:
        q = q_proj(query)
        if value is key:
            k, v, *c = joint_linear(key, kv_proj, heads, stack, constants)
        else:
            k, *c = joint_linear(key, [p for p in kv_proj if p is not v_proj], heads, stack, constants)
            v = v_proj(value)
    # the content bias stays a strided view: the kernels add it to the scores or mask it (a new tensor either way)
    return q, k.transpose(0, 1), c[0].permute(1, 2, 0) if c else None, head_values(v, heads)


def project_folded(
    query: Tensor,
    key: Optional[Tensor],
    q_proj: nn.Linear,
    k_proj: nn.Linear,
    v_proj: nn.Linear,
    content_bias: nn.Linear,
    heads: int,
    constants=None,
):
    """A decoding step's projections with the content bias folded into the keys: q': T x B x (D_k + H) = [q | 1];
    k': B x S x (D_k + H) = [k | c]; v: B x H x S x d_v (k', v None without a key)."""
    query_group, key_groups = [q_proj, ONES], [[k_proj, content_bias], [v_proj]]
    if key is None:
        return stacked_linear(query, [query_group], heads, constants)[0], None, None
    if key is query:
        q, k, v = stacked_linear(query, [query_group, *key_groups], heads, constants)
    else:
        (q,) = stacked_linear(query, [query_group], heads, constants)
        k, v = stacked_linear(key, key_groups, heads, constants)
    return q, k.transpose(0, 1), head_values(v, heads)


def folded_mixing(scaled_mixing: Tensor, constants=None) -> Tensor:
    """[s M | I_H] (H x (D_k + H)): head h's query from [q | 1 ... 1] is [s q m_h | e_h]."""

    def make():
        heads = scaled_mixing.size(0)
        identity = torch.eye(heads, dtype=scaled_mixing.dtype, device=scaled_mixing.device)
        return torch.cat([scaled_mixing, identity], dim=1)

    return kept(constants, f"folded_mixing_{scaled_mixing.dtype}", make)


def fold_padding(keys: Tensor, key_padding_mask: Tensor, key_dim: int) -> Tensor:
    """[k | c] with c = FOLDED_PADDING_KEY at padded keys (B x S x (D_k + H)): the padding folded in too."""
    padding = key_padding_mask.to(torch.bool)[:, :, None]
    return torch.cat([keys[..., :key_dim], keys[..., key_dim:].masked_fill(padding, FOLDED_PADDING_KEY)], dim=-1)
