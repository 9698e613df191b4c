"""The ``fused`` kernel (Triton) against the explicit formula and the ``bmm`` kernel, forward and backward, on the
CPU under Triton's interpreter (TRITON_INTERPRET=1, tests/conftest.py). On a GPU, benchmarks/check_fused_path.py
repeats the comparison in fp16 / bf16."""

import pytest
import torch

pytest.importorskip("triton")

from collab_fairseq.modules import fused_collab_attention as fused  # noqa: E402  (after the skip)
from collab_fairseq.modules.collaborative_attention import CollaborativeMultiheadAttention  # noqa: E402

TOL = 3e-5  # the kernel computes in fp32 (here from fp64 inputs)


def _inputs(bsz, heads, tgt_len, src_len, dim, value_dim, content_bias=True, padding=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    q, m, k, v = (
        leaf(bsz, tgt_len, dim),
        leaf(heads, dim),
        leaf(bsz, src_len, dim),
        leaf(bsz, heads, src_len, value_dim),
    )
    c = leaf(bsz, heads, src_len) if content_bias else None
    pad = None
    if padding:
        pad = torch.zeros(bsz, src_len, dtype=torch.bool)
        pad[0, -2:] = True
    return q, m, k, v, c, pad


def _explicit(q, m, k, v, c, pad, causal, keep=None, dropout_p=0.0):
    """softmax((q * m_h) . k + c_h + masks) (dropped with ``keep``) @ v_h, in float64."""
    scores = torch.einsum("btd,hd,bsd->bhts", q, m, k)
    if c is not None:
        scores = scores + c[:, :, None, :]
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    if causal:
        scores = scores.masked_fill(torch.ones(q.size(1), k.size(1), dtype=torch.bool).triu(1), float("-inf"))
    probs = scores.softmax(-1)
    if keep is not None:
        probs = probs * keep / (1 - dropout_p)
    return probs @ v


CASES = {
    "cross attention, padding, odd lengths": (2, 4, 5, 7, 16, 8, False, True, True),
    "causal self-attention, widths not powers of two": (2, 3, 37, 37, 24, 20, True, True, False),
    "several tiles each way, no content bias": (1, 2, 70, 70, 32, 16, True, False, True),
    "one decoding step": (3, 4, 1, 9, 16, 16, False, True, True),
    "short causal self-attention (16-row query tiles)": (2, 4, 9, 9, 16, 16, True, True, True),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_outputs_and_all_gradients_equal_the_explicit_formula(case):
    bsz, heads, tgt_len, src_len, dim, value_dim, causal, content_bias, padding = CASES[case]
    q, m, k, v, c, pad = _inputs(bsz, heads, tgt_len, src_len, dim, value_dim, content_bias, padding)
    out = fused.fused_collab_attention(q, m, k, v, c, pad, causal, 0.0)
    ref = _explicit(q, m, k, v, c, pad, causal)
    assert out.shape == ref.shape == (bsz, heads, tgt_len, value_dim)
    assert (out - ref).abs().max() <= TOL
    leaves = [x for x in (q, m, k, v, c) if x is not None]
    grad = torch.randn_like(out)
    for name, got, want in zip("qmkvc", torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        assert (got - want).abs().max() <= TOL * max(1.0, want.abs().max().item()), name


def test_dropout_drops_the_same_probabilities_in_forward_and_backward():
    q, m, k, v, c, _ = _inputs(2, 2, 6, 6, 16, 16, padding=False)

    def attend(values):
        return fused._FusedCollabAttention.apply(q, m, k, values, c, None, True, 0.3, 1234)

    # one-hot values read the kept, rescaled probabilities out of the kernel: out[t] = sum_s p'[t, s] e_s
    dropped = attend(torch.eye(6, dtype=torch.float64).expand(2, 2, 6, 6).contiguous()).detach()
    keep = dropped != 0
    assert 0.2 < keep.sum() / keep.numel() < 0.55  # 21 of 36 positions are causal, 70 % of those kept
    out, ref = attend(v), _explicit(q, m, k, v, c, None, True, keep, 0.3)
    assert (out - ref).abs().max() <= TOL
    grad = torch.randn_like(out)
    for got, want in zip(
        torch.autograd.grad(out, (q, m, k, v, c), grad), torch.autograd.grad(ref, (q, m, k, v, c), grad)
    ):
        assert (got - want).abs().max() <= TOL
    assert torch.equal(attend(v), out)  # the seed decides the mask


def _layers(key_dim=16):
    torch.manual_seed(0)
    kwargs = dict(self_attention=True, key_dim=key_dim, mixing_init="normal", dropout=0.0)
    bmm = CollaborativeMultiheadAttention(32, 4, kernel="bmm", **kwargs)
    fast = CollaborativeMultiheadAttention(32, 4, kernel="fused", **kwargs)
    fast.load_state_dict(bmm.state_dict())
    return bmm, fast


def _spy(monkeypatch):
    calls = []
    real = fused.fused_collab_attention

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(fused, "fused_collab_attention", spy)
    return calls


def test_the_layer_runs_the_fused_kernel_and_trains_as_with_bmm(monkeypatch):
    """Decoder self-attention in training mode (future mask, padding): the same outputs and parameter
    gradients as the bmm kernel, and the fused kernel is what ran."""
    calls = _spy(monkeypatch)
    bmm, fast = _layers()
    x = torch.randn(9, 3, 32)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, -3:] = True
    mask = torch.triu(torch.full((9, 9), float("-inf")), 1)
    outs = [layer(x, x, x, key_padding_mask=padding, attn_mask=mask, need_weights=False)[0] for layer in (bmm, fast)]
    assert len(calls) == 1 and calls[0][6] is True  # causal
    assert (outs[0] - outs[1]).abs().max() <= 1e-5
    grad = torch.randn_like(outs[0])
    names = [name for name, _ in bmm.named_parameters()]
    grads_bmm = torch.autograd.grad(outs[0], list(bmm.parameters()), grad)
    grads_fast = torch.autograd.grad(outs[1], list(fast.parameters()), grad)
    for name, g_bmm, g_fast in zip(names, grads_bmm, grads_fast):
        assert (g_bmm - g_fast).abs().max() <= 1e-5, name


def test_inputs_it_cannot_take_fall_back_to_bmm(monkeypatch):
    calls = _spy(monkeypatch)
    x = torch.randn(5, 2, 32)
    bmm, fast = _layers()
    not_causal = torch.zeros(5, 5).masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))
    a, b = (layer(x, x, x, attn_mask=not_causal, need_weights=False)[0] for layer in (bmm, fast))
    assert torch.equal(a, b) and not calls
    wide_bmm, wide_fast = _layers(key_dim=160)  # D_k over fused.MAX_HEAD_DIM
    a, b = (layer(x, x, x, need_weights=False)[0] for layer in (wide_bmm, wide_fast))
    assert torch.equal(a, b) and not calls
