"""How much key/query space the heads of a trained layer use (the paper's motivating observation).

For each attention layer, the H head products P_h = W_Q^h^T W_K^h (D_q x D_kin) are stacked side by
side, [P_1 ... P_H] (D_q x H*D_kin): its rank is the query space all heads need together, the D_k a
collaborative layer needs for its shared W_Q (stacked on top of each other for the key side). The
spectra tell how many dimensions keep 90 / 95 / 99 % of the energy (sum of squared singular values).
"""

from typing import Dict, List, Sequence

import torch

from collab_fairseq.reparam.cp import AttentionWeights, head_products

ENERGIES = (0.90, 0.95, 0.99)


def layer_products(state_dict: Dict[str, torch.Tensor], prefix: str, num_heads: int) -> torch.Tensor:
    """H x D_q x D_kin head products of a standard, concatenated or collaborative layer (float32)."""
    wq = state_dict[f"{prefix}.q_proj.weight"].float()
    wk = state_dict[f"{prefix}.k_proj.weight"].float()
    mixing = state_dict.get(f"{prefix}.mixing")
    if mixing is not None:  # collaborative: P_h = W_Q^T diag(m_h) W_K (the stored scale does not change ranks)
        return torch.einsum("ri,hr,rj->hij", wq, mixing.float(), wk)
    return head_products(AttentionWeights(wq, None, wk, num_heads))


def energy_dims(singular_values: torch.Tensor, energies: Sequence[float] = ENERGIES) -> List[int]:
    """Smallest number of directions whose squared singular values reach each energy fraction."""
    cum = torch.cumsum(singular_values.double() ** 2, 0)
    cum = cum / cum[-1].clamp_min(1e-300)
    return [int(torch.searchsorted(cum, torch.tensor(e, dtype=cum.dtype)).item()) + 1 for e in energies]


def layer_spectrum(products: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Singular values of the query side [P_1 ... P_H] and the key side [P_1; ...; P_H]."""
    heads, d_q, d_k = products.shape
    query_side = products.permute(1, 0, 2).reshape(d_q, heads * d_k)
    key_side = products.reshape(heads * d_q, d_k)
    return {"query": torch.linalg.svdvals(query_side), "key": torch.linalg.svdvals(key_side)}
