"""The ``fused`` kernel: collaborative attention in one Triton kernel, forward and backward, flash-style.

For head h of batch b, with the shared query q (B x T x D), the mixing matrix m (H x D, the attention scaling
already folded in), the shared keys k (B x S x D), per-head values v (B x H x S x d_v) and the content bias
c (B x H x S):

    out[b, h, t] = sum_s softmax_s((q[b, t] * m[h]) . k[b, s] + c[b, h, s] + masks) * v[b, h, s]

Neither the per-head queries (H x D per token) nor the B x H x T x S scores are written to memory: each program
multiplies its query tile by m_h in registers and runs the online softmax over key tiles; the backward
recomputes the scores from the saved log-sum-exp. Masks: key padding (B x S) and the causal (future) mask;
attention dropout draws Philox numbers from (seed, position), the same in both passes. Gradients: q, m, k, v, c;
the reductions of m's and c's gradients over all B x T x S positions accumulate in fp32 whatever the input
dtype. The backward's key-side program loops over the heads, so a key tile is read once for all of them and the
shared key's gradient sums the heads in registers.

Runs on a CUDA GPU, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is
imported), which is how the tests check it against the ``bmm`` kernel. :func:`supported` says when it applies.
"""

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 128  # D and d_v; larger tiles do not fit the registers of one program


def supported(queries: Tensor, values: Tensor, attn_mask_is_causal: Optional[bool], dropout_p: float) -> bool:
    """Can :func:`fused_collab_attention` run these inputs (device, widths, mask kind, dropout offsets)?

    attn_mask_is_causal: None without attention mask, True for the future mask, False for any other mask."""
    if attn_mask_is_causal is False:
        return False
    if not (queries.is_cuda or INTERPRETED):
        return False
    bsz, tgt_len, dim = queries.shape
    heads, src_len, value_dim = values.shape[1:]
    if dim > MAX_HEAD_DIM or value_dim > MAX_HEAD_DIM:
        return False
    if attn_mask_is_causal and tgt_len != src_len:
        return False
    return dropout_p == 0 or bsz * heads * tgt_len * src_len < 2**31  # int32 dropout offsets


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@triton.jit
def _tile(ptr, rows, cols, row_stride, n_rows, n_cols):
    """Load a len(rows) x len(cols) tile of a row-major matrix (last stride 1), zeros outside n_rows x n_cols."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, rows, cols, row_stride, n_rows, n_cols, value):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value, mask=mask)


@triton.jit
def _key_end(pid_m, S, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """End of the keys a query tile attends to: with the future mask, none after the tile's last query."""
    end = S
    if CAUSAL:
        if (pid_m + 1) * BLOCK_M < S:
            end = (pid_m + 1) * BLOCK_M
    return end


@triton.jit
def _scores(qh, k, c_ptr, pad_ptr, offs_m, offs_n, T, S, HAS_CB: tl.constexpr, HAS_PAD: tl.constexpr,
            CAUSAL: tl.constexpr):  # fmt: skip
    """Scores of a BLOCK_M x BLOCK_N tile (fp32) and where they are valid."""
    s = tl.dot(qh, tl.trans(k))
    valid = (offs_m[:, None] < T) & (offs_n[None, :] < S)
    if HAS_CB:
        s += tl.load(c_ptr + offs_n, mask=offs_n < S, other=0.0).to(tl.float32)[None, :]
    if HAS_PAD:
        pad = tl.load(pad_ptr + offs_n, mask=offs_n < S, other=1)
        valid = valid & (pad[None, :] == 0)
    if CAUSAL:
        valid = valid & (offs_m[:, None] >= offs_n[None, :])
    return tl.where(valid, s, float("-inf")), valid


@triton.jit
def _keep(seed, bh, offs_m, offs_n, T, S, dropout_p):
    """Dropout's keep mask of a tile: Philox numbers of (seed, ((b * H + h) * T + t) * S + s)."""
    offsets = (bh * T + offs_m[:, None]) * S + offs_n[None, :]
    return tl.rand(seed, offsets) >= dropout_p


@triton.jit
def _forward(Q, M, K, V, C, PAD, OUT, LSE,
             sq_b, sq_t, sm_h, sk_b, sk_s, sv_b, sv_h, sv_s, sc_b, sc_h, sp_b, so_b, so_h, so_t,
             H, T, S, D, DV, dropout_p, seed,
             HAS_CB: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _tile(Q + b * sq_b, offs_m, offs_d, sq_t, T, D)
    m = tl.load(M + h * sm_h + offs_d, mask=offs_d < D, other=0.0)
    qh = (q.to(tl.float32) * m.to(tl.float32)[None, :]).to(q.dtype)  # head h's query, in registers only
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    end = _key_end(pid_m, S, BLOCK_M, CAUSAL)
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K + b * sk_b, offs_n, offs_d, sk_s, S, D)
        v = _tile(V + b * sv_b + h * sv_h, offs_n, offs_dv, sv_s, S, DV)
        s, valid = _scores(qh, k, C + b * sc_b + h * sc_h, PAD + b * sp_b, offs_m, offs_n, T, S, HAS_CB, HAS_PAD,
                           CAUSAL)  # fmt: skip
        new_max = tl.maximum(row_max, tl.max(s, 1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows with nothing valid yet
        alpha = tl.exp(row_max - safe_max)
        p = tl.where(valid, tl.exp(s - safe_max[:, None]), 0.0)
        row_sum = row_sum * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m, offs_n, T, S, dropout_p)
            p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        row_max = new_max
    empty = row_sum == 0.0  # every key masked: output 0, and +inf log-sum-exp makes the backward's p = 0
    out = acc / tl.where(empty, 1.0, row_sum)[:, None]
    lse = tl.where(empty, float("inf"), row_max + tl.log(row_sum))
    _store_tile(OUT + b * so_b + h * so_h, offs_m, offs_dv, so_t, T, DV, out.to(OUT.dtype.element_ty))
    tl.store(LSE + bh * T + offs_m, lse, mask=offs_m < T)


@triton.jit
def _score_grads(qh, k, v, do, lse, delta, c_ptr, pad_ptr, seed, bh, offs_m, offs_n, T, S, dropout_p,
                 HAS_CB: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr):  # fmt: skip
    """Both backward kernels' recomputation of one BLOCK_M x BLOCK_N tile: the probabilities as P @ V used them
    (after dropout) and the scores' gradient dS = P * (dP - delta), fp32."""
    s, valid = _scores(qh, k, c_ptr, pad_ptr, offs_m, offs_n, T, S, HAS_CB, HAS_PAD, CAUSAL)
    p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v))
    used = p
    if DROPOUT:
        keep = _keep(seed, bh, offs_m, offs_n, T, S, dropout_p)
        used = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
    return used, p * (dp - delta[:, None])


@triton.jit
def _backward_keys(Q, M, K, V, C, PAD, DO, LSE, DELTA, DK, DV_OUT, DC,
                   sq_b, sq_t, sm_h, sk_b, sk_s, sv_b, sv_h, sv_s, sc_b, sc_h, sp_b, so_b, so_h, so_t,
                   H, T, S, D, DV, dropout_p, seed,
                   HAS_CB: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_DV: tl.constexpr):  # fmt: skip
    """One key tile of one batch element, all heads: dK (summed over heads), dV and dC of each head."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _tile(K + b * sk_b, offs_n, offs_d, sk_s, S, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    start = 0
    if CAUSAL:
        start = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M  # queries before the tile's first key see none of it
    for h in range(0, H):
        bh = b * H + h
        m = tl.load(M + h * sm_h + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
        v = _tile(V + b * sv_b + h * sv_h, offs_n, offs_dv, sv_s, S, DV)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
        dc = tl.zeros([BLOCK_N], tl.float32)
        for start_m in range(start, T, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q = _tile(Q + b * sq_b, offs_m, offs_d, sq_t, T, D)
            qh = (q.to(tl.float32) * m[None, :]).to(q.dtype)
            lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=float("inf"))
            delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
            do = _tile(DO + b * so_b + h * so_h, offs_m, offs_dv, so_t, T, DV)
            p, ds = _score_grads(qh, k, v, do, lse, delta, C + b * sc_b + h * sc_h, PAD + b * sp_b, seed, bh, offs_m,
                                 offs_n, T, S, dropout_p, HAS_CB, HAS_PAD, CAUSAL, DROPOUT)  # fmt: skip
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dc += tl.sum(ds, 0)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), qh)
        _store_tile(DV_OUT + b * sv_b + h * sv_h, offs_n, offs_dv, sv_s, S, DV, dv.to(V.dtype.element_ty))
        if HAS_CB:
            tl.store(DC + bh * S + offs_n, dc, mask=offs_n < S)
    _store_tile(DK + b * sk_b, offs_n, offs_d, sk_s, S, D, dk.to(K.dtype.element_ty))


@triton.jit
def _backward_queries(Q, M, K, V, C, PAD, DO, LSE, DELTA, DQ, DM_PARTS,
                      sq_b, sq_t, sm_h, sk_b, sk_s, sv_b, sv_h, sv_s, sc_b, sc_h, sp_b, so_b, so_h, so_t,
                      H, T, S, D, DV, dropout_p, seed,
                      HAS_CB: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_DV: tl.constexpr):  # fmt: skip
    """One query tile of one batch element, all heads: dQ = sum_h dQ_h * m_h, and this tile's part of dM."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _tile(Q + b * sq_b, offs_m, offs_d, sq_t, T, D)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end = _key_end(pid_m, S, BLOCK_M, CAUSAL)
    for h in range(0, H):
        bh = b * H + h
        m = tl.load(M + h * sm_h + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
        qh = (q.to(tl.float32) * m[None, :]).to(q.dtype)
        do = _tile(DO + b * so_b + h * so_h, offs_m, offs_dv, so_t, T, DV)
        lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=float("inf"))
        delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
        dqh = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _tile(K + b * sk_b, offs_n, offs_d, sk_s, S, D)
            v = _tile(V + b * sv_b + h * sv_h, offs_n, offs_dv, sv_s, S, DV)
            _, ds = _score_grads(qh, k, v, do, lse, delta, C + b * sc_b + h * sc_h, PAD + b * sp_b, seed, bh, offs_m,
                                 offs_n, T, S, dropout_p, HAS_CB, HAS_PAD, CAUSAL, DROPOUT)  # fmt: skip
            dqh += tl.dot(ds.to(k.dtype), k)
        dq += dqh * m[None, :]
        dm = tl.sum(dqh * q.to(tl.float32), 0)  # rows past T hold q = 0
        tl.store(DM_PARTS + ((pid_m * tl.num_programs(1) + b) * H + h) * D + offs_d, dm, mask=offs_d < D)
    _store_tile(DQ + b * sq_b, offs_m, offs_d, sq_t, T, D, dq.to(Q.dtype.element_ty))


def _blocks(dim: int, value_dim: int, tgt_len: int = 64):
    """Tiles and launch settings: the best of benchmarks/fused_kernel.py --tune on an H100 (8 x 4096 tokens, fp16,
    8 heads, d_v 64; results/performance/README.md). A few queries (a decoding step: T = 1) take the smallest query tile
    instead of a 64-row tile that would be almost all padding."""
    block_d, block_dv = _pow2(dim), _pow2(value_dim)
    stages = 2 if max(block_d, block_dv) <= 64 else 3
    block_m = 16 if tgt_len <= 16 else 64
    return dict(BLOCK_M=block_m, BLOCK_N=64, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=4, num_stages=stages)


class _FusedCollabAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, mixing, k, v, content_bias, key_padding, causal, dropout_p, seed):
        bsz, tgt_len, dim = q.shape
        heads, src_len, value_dim = v.shape[1:]
        out = torch.empty(bsz, heads, tgt_len, value_dim, dtype=v.dtype, device=v.device)
        lse = torch.empty(bsz, heads, tgt_len, dtype=torch.float32, device=q.device)
        blocks = _blocks(dim, value_dim, tgt_len)
        # q stands in for an absent content bias or padding mask: a pointer the kernels never read
        c = content_bias if content_bias is not None else q
        pad = key_padding if key_padding is not None else q
        args = _strides(q, mixing, k, v, c, pad, out) + (heads, tgt_len, src_len, dim, value_dim, dropout_p, seed)
        flags = dict(HAS_CB=content_bias is not None, HAS_PAD=key_padding is not None, CAUSAL=causal,
                     DROPOUT=dropout_p > 0)  # fmt: skip
        grid = (triton.cdiv(tgt_len, blocks["BLOCK_M"]), bsz * heads)
        _forward[grid](q, mixing, k, v, c, pad, out, lse, *args, **flags, **blocks)
        ctx.save_for_backward(q, mixing, k, v, c, pad, out, lse)
        ctx.args, ctx.flags, ctx.blocks = args, flags, blocks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, mixing, k, v, c, pad, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous() if grad_out.stride() != out.stride() else grad_out
        bsz, tgt_len, dim = q.shape
        heads, src_len, _ = v.shape[1:]
        blocks, flags, args = ctx.blocks, ctx.flags, ctx.args
        delta = (grad_out.float() * out.float()).sum(-1)  # B x H x T
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dc = torch.empty(bsz, heads, src_len, dtype=torch.float32, device=q.device) if flags["HAS_CB"] else c
        query_tiles = triton.cdiv(tgt_len, blocks["BLOCK_M"])
        dm_parts = torch.empty(query_tiles, bsz, heads, dim, dtype=torch.float32, device=q.device)
        _backward_keys[(triton.cdiv(src_len, blocks["BLOCK_N"]), bsz)](
            q, mixing, k, v, c, pad, grad_out, lse, delta, dk, dv, dc, *args, **flags, **blocks
        )
        _backward_queries[(query_tiles, bsz)](
            q, mixing, k, v, c, pad, grad_out, lse, delta, dq, dm_parts, *args, **flags, **blocks
        )
        dm = dm_parts.sum(dim=(0, 1)).to(mixing.dtype)
        dc = dc.to(c.dtype) if flags["HAS_CB"] else None
        return dq, dm, dk, dv, dc, None, None, None, None


def _strides(q, mixing, k, v, c, pad, out):
    for name, t in (("q", q), ("mixing", mixing), ("k", k), ("v", v), ("content_bias", c), ("padding", pad)):
        assert t.stride(-1) == 1, f"fused attention: {name} must be contiguous in its last dimension"
    return (
        *q.stride()[:2],
        mixing.stride(0),
        *k.stride()[:2],
        *v.stride()[:3],
        *c.stride()[:2],
        pad.stride(0),
        *out.stride()[:3],
    )


def fused_collab_attention(
    queries: Tensor,
    mixing: Tensor,
    keys: Tensor,
    values: Tensor,
    content_bias: Optional[Tensor],
    key_padding_mask: Optional[Tensor],
    causal: bool,
    dropout_p: float,
) -> Tensor:
    """Collaborative attention without writing per-head queries or scores.

    Args:
        queries: B x T x D shared queries; mixing: H x D (times the attention scaling); keys: B x S x D;
        values: B x H x S x d_v; content_bias: B x H x S or None; key_padding_mask: B x S, True at padding,
        or None; causal: apply the future mask (T == S); dropout_p: attention dropout.
    Returns:
        B x H x T x d_v.
    """
    values = values.contiguous()
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if dropout_p > 0 else 0
    padding = key_padding_mask.to(torch.uint8).contiguous() if key_padding_mask is not None else None
    bias = content_bias.contiguous() if content_bias is not None else None
    return _FusedCollabAttention.apply(
        queries.contiguous(), mixing.contiguous(), keys.contiguous(), values, bias, padding, causal, dropout_p, seed
    )
