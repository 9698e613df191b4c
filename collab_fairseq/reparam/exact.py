"""Exact conversion of a standard attention layer into a collaborative one at full key dimension.

With D_k = H * d_k and the ``concatenate`` mixing (row h is one on head h's block), the
shared projections are the stacked per-head ones and the layer computes the same function:

    s (x W_Q^h + b_Q^h) . (y W_K^h + b_K^h)
        = s (q(x) * m_h) . k(y)  +  s b_Q^h . (y W_K^h)  +  [terms without y: removed by the softmax]

so the content bias row h is W_C[h] = s * b_Q^h W_K^h (the query bias seen through the keys),
and b_K is dropped. Low-rank conversion (CP decomposition) builds on this in the reparam issue.
"""

import torch
from fairseq.modules import MultiheadAttention

from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention, init_mixing_
from collab_fairseq.reparam.cp import AttentionWeights, content_bias_from_query_bias


@torch.no_grad()
def copy_from_multihead_attention(target: CollaborativeMultiheadAttention, source: MultiheadAttention):
    """Load ``source``'s weights into ``target`` so both compute the same outputs.

    ``target`` must have D_k == source's H * d_k (full key dimension) and the same
    embed/kdim/vdim and heads. Raises ValueError naming the mismatch otherwise.
    """
    heads, head_dim = source.num_heads, source.head_dim
    full = heads * head_dim
    for name, want, got in [
        ("num_heads", heads, target.num_heads),
        ("key_dim", full, target.key_dim),
        ("embed_dim", source.embed_dim, target.embed_dim),
        ("kdim", source.kdim, target.kdim),
        ("vdim", source.vdim, target.vdim),
    ]:
        if want != got:
            raise ValueError(f"cannot copy exactly: source {name}={want} but target {name}={got}")
    if source.bias_k is not None or source.bias_v is not None:
        raise ValueError("cannot copy a MultiheadAttention built with add_bias_kv")

    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        dst, src = getattr(target, name), getattr(source, name)
        dst.weight.copy_(src.weight)
        if dst.bias is not None:
            dst.bias.copy_(src.bias if src.bias is not None else torch.zeros_like(dst.bias))
    if not target.collaborative:
        return target

    target.set_mixing_(init_mixing_(torch.empty_like(target.mixing), "concatenate"))
    has_query_bias = source.q_proj.bias is not None and bool(source.q_proj.bias.any())
    if target.content_bias is None:
        if has_query_bias:
            raise ValueError("the source has query biases, which need the content bias: build the target with it")
    else:
        weights = AttentionWeights(source.q_proj.weight, source.q_proj.bias, source.k_proj.weight, heads)
        target.content_bias.weight.copy_(content_bias_from_query_bias(weights))
    return target
