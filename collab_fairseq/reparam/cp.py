"""Low-rank re-parametrization of standard attention heads into collaborative ones (CP / PARAFAC).

Head h of a standard layer scores s_old * x W_Q^h^T W_K^h y^T (fairseq Linear weights are
out x in, so W_Q^h is d_k x D_q). Stacking the H products gives the tensor

    T[h] = W_Q^h^T W_K^h            (H x D_q x D_k_in)

and a rank-D_k CP decomposition T[h] ~ sum_r lambda_r u_r[h] a_r b_r^T is exactly a
collaborative layer: shared query rows a_r, shared key rows b_r, mixing M[h, r] (the
scale s_new = (D_k / H)^-1/2 of the new layer is folded into M). The per-head query biases
become the content bias (see :mod:`collab_fairseq.reparam.exact`); values and the output
projection are copied.

ALS starts from the per-head truncated SVD (each head keeps its top D_k / H directions:
concatenated heads at the smaller D_k), so the CP result is never worse than plain
truncation, and at D_k = H * d_k it starts exact.
"""

import time
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class AttentionWeights:
    """What re-parametrization needs of one standard attention layer (float32 tensors).

    q_weight: H*d_k x D_q, q_bias: H*d_k or None, k_weight: H*d_k x D_kin; num_heads H.
    """

    q_weight: torch.Tensor
    q_bias: Optional[torch.Tensor]
    k_weight: torch.Tensor
    num_heads: int

    @property
    def head_dim(self) -> int:
        return self.q_weight.size(0) // self.num_heads

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5


@dataclass
class CollaborativeWeights:
    """A collaborative layer's key/query part: q_weight, k_weight (D_k x D_in), mixing (H x D_k),
    content_bias (H x D_kin), plus the relative error of the reconstructed head products."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    mixing: torch.Tensor
    content_bias: torch.Tensor
    relative_error: float
    seconds: float


def head_products(w: AttentionWeights) -> torch.Tensor:
    """H x D_q x D_kin tensor of W_Q^h^T W_K^h."""
    heads, d = w.num_heads, w.head_dim
    wq = w.q_weight.view(heads, d, -1)
    wk = w.k_weight.view(heads, d, -1)
    return torch.bmm(wq.transpose(1, 2), wk)


def content_bias_from_query_bias(w: AttentionWeights) -> torch.Tensor:
    """H x D_kin: row h = s_old * b_Q^h W_K^h (zeros without query biases)."""
    heads, d = w.num_heads, w.head_dim
    wk = w.k_weight.view(heads, d, -1)
    if w.q_bias is None:
        return torch.zeros(heads, wk.size(-1), dtype=wk.dtype, device=wk.device)
    return w.scaling * torch.bmm(w.q_bias.view(heads, 1, d), wk).squeeze(1)


def truncated_head_svd(products: torch.Tensor, rank: int):
    """CP factors (weights, [mixing H x R, A D_q x R, B D_kin x R]) keeping rank // H directions per head."""
    heads = products.size(0)
    per_head = rank // heads
    u, s, vh = torch.linalg.svd(products, full_matrices=False)  # H x D_q x m, H x m, H x m x D_kin
    a = u[:, :, :per_head].permute(1, 0, 2).reshape(products.size(1), heads * per_head)
    b = vh[:, :per_head, :].permute(2, 0, 1).reshape(products.size(2), heads * per_head)
    mixing = torch.zeros(heads, heads * per_head, dtype=products.dtype, device=products.device)
    for h in range(heads):
        mixing[h, h * per_head : (h + 1) * per_head] = s[h, :per_head]
    weights = torch.ones(heads * per_head, dtype=products.dtype, device=products.device)
    return weights, [mixing, a, b]


def cp_decompose(products: torch.Tensor, rank: int, n_iter: int = 200, tol: float = 1e-7):
    """Rank-``rank`` CP of the H x D_q x D_kin tensor with TensorLy (PyTorch backend, the tensor's device).

    Returns (mixing H x R, A D_q x R, B D_kin x R) with T[h] ~ A diag(mixing[h]) B^T.
    """
    import tensorly as tl
    from tensorly.cp_tensor import CPTensor
    from tensorly.decomposition import parafac

    heads = products.size(0)
    if rank % heads == 0 and rank <= heads * min(products.shape[1:]):
        init = CPTensor(truncated_head_svd(products, rank))
    else:
        init = "svd"
    with tl.backend_context("pytorch"):
        cp = parafac(products, rank, n_iter_max=n_iter, init=init, tol=tol, normalize_factors=False)
    weights, (mixing, a, b) = cp
    return mixing * weights, a, b


def reparametrize_attention(w: AttentionWeights, key_dim: int, n_iter: int = 200) -> CollaborativeWeights:
    """The collaborative key/query weights of width ``key_dim`` closest (CP-ALS) to ``w``'s heads.

    Each component is balanced: |a_r| = |b_r| and max_h |M[h, r]| = 1 (the scale of the
    ``concatenate`` mixing, so the converted layer trains like a freshly initialised one).
    """
    heads = w.num_heads
    max_rank = heads * w.head_dim
    if not 0 < key_dim <= max_rank:
        raise ValueError(
            f"D_k={key_dim} is out of range for a layer with {heads} heads of d_k={w.head_dim}: "
            f"choose 1 <= D_k <= {max_rank}"
        )
    start = time.perf_counter()
    products = head_products(w)
    mixing, a, b = cp_decompose(products, key_dim, n_iter=n_iter)
    error = (torch.einsum("hr,ir,jr->hij", mixing, a, b) - products).norm() / products.norm().clamp_min(1e-30)

    new_scaling = (key_dim / heads) ** -0.5
    mixing = mixing * (w.scaling / new_scaling)  # s_new * M_new = s_old * M
    peak = mixing.abs().amax(dim=0).clamp_min(1e-12)  # R
    norms = (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-12)
    # a_r -> a_r * alpha_r / |a_r|, b_r likewise, M[:, r] / peak: the product a M b^T is unchanged
    alpha = (peak * norms).sqrt()
    a = a / a.norm(dim=0).clamp_min(1e-12) * alpha
    b = b / b.norm(dim=0).clamp_min(1e-12) * alpha
    mixing = mixing / peak
    return CollaborativeWeights(
        q_weight=a.t().contiguous(),
        k_weight=b.t().contiguous(),
        mixing=mixing.contiguous(),
        content_bias=content_bias_from_query_bias(w),
        relative_error=float(error),
        seconds=time.perf_counter() - start,
    )
