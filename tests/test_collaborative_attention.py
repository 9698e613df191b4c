"""Parity of CollaborativeMultiheadAttention with fairseq's MultiheadAttention, incremental decoding, beam reorder."""

import pytest
import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from step_flops import OperatorCounter  # benchmarks/: counts the operators a decoding step dispatches

import collab_fairseq.modules.collab_projections as projections
from collab_fairseq.modules import CollaborativeMultiheadAttention
from collab_fairseq.modules.attention_kernels import KERNEL_NAMES, LONG_SEQUENCE, kernel_preferences, per_head_queries
from collab_fairseq.reparam import copy_from_multihead_attention

EMBED, HEADS = 32, 4
TOL = 1e-5


def _pair(kind, mode="collaborative", seed=0):
    """A random fairseq MHA and our layer with its weights copied (D_k = H * d_k)."""
    torch.manual_seed(seed)
    flags = dict(self_attention=kind != "cross", encoder_decoder_attention=kind == "cross")
    ref = MultiheadAttention(EMBED, HEADS, dropout=0.0, **flags).eval()
    with torch.no_grad():  # fairseq zeroes some biases at init; make every parameter count
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = CollaborativeMultiheadAttention(EMBED, HEADS, dropout=0.0, key_dim=EMBED, mode=mode, **flags).eval()
    copy_from_multihead_attention(ours, ref)
    return ref, ours


def _inputs(kind, tgt_len=7, src_len=9, bsz=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(tgt_len, bsz, EMBED, generator=g)
    key = torch.randn(src_len, bsz, EMBED, generator=g) if kind == "cross" else query
    lengths = torch.tensor([key.size(0), key.size(0) - 2, key.size(0) - 4])
    padding = torch.arange(key.size(0))[None, :] >= lengths[:, None]  # B x S, True at padding
    return query, key, padding


def _causal(t):
    return torch.triu(torch.full((t, t), float("-inf")), 1)


@pytest.mark.parametrize("mode", ["collaborative", "concatenate"])
@pytest.mark.parametrize("kind", ["encoder_self", "decoder_self", "cross"])
@pytest.mark.parametrize(
    "need_weights,kernel",
    [
        (True, "bmm"),
        (False, "auto"),
        (False, "bmm"),
        (False, "sdpa"),
        (False, "folded"),
        (False, "flash"),
        (False, "fused"),
        (False, "mixgemm"),
    ],
)
def test_matches_fairseq_multihead_attention(kind, mode, need_weights, kernel):
    ref, ours = _pair(kind, mode)
    ours.kernel = kernel  # the kernel used when no weights are returned
    query, key, padding = _inputs(kind)
    kwargs = dict(need_weights=need_weights, need_head_weights=need_weights)
    if kind == "encoder_self":
        kwargs["key_padding_mask"] = padding
    elif kind == "decoder_self":
        kwargs["attn_mask"] = _causal(query.size(0))
    else:
        kwargs.update(key_padding_mask=padding, static_kv=True)
    # fairseq's torch fast path averages the weights even when head weights are asked for;
    # its explicit path (taken when the embed-dim check is skipped) returns them per head
    ref.skip_embed_dim_check = need_weights
    out_ref, w_ref = ref(query, key, key, **kwargs)
    out, w = ours(query, key, key, **kwargs)
    assert out.shape == out_ref.shape
    assert (out - out_ref).abs().max() <= TOL
    if need_weights:
        assert w.shape == w_ref.shape == (HEADS, query.size(1), query.size(0), key.size(0))
        assert (w - w_ref).abs().max() <= TOL
    else:
        assert w is None


def test_averaged_weights_and_before_softmax_match_fairseq():
    ref, ours = _pair("cross")
    query, key, padding = _inputs("cross")
    _, w_ref = ref(query, key, key, key_padding_mask=padding, static_kv=True)
    _, w = ours(query, key, key, key_padding_mask=padding, static_kv=True)
    assert w.shape == w_ref.shape == (query.size(1), query.size(0), key.size(0))
    assert (w - w_ref).abs().max() <= TOL
    s_ref, v_ref = ref(query, key, key, static_kv=True, before_softmax=True)
    s, v = ours(query, key, key, static_kv=True, before_softmax=True)
    # fairseq's scores keep the query-only term q.b_K that the softmax removes; compare after softmax
    assert torch.allclose(s.softmax(-1), s_ref.softmax(-1), atol=TOL)
    assert torch.allclose(v, v_ref, atol=TOL)


def test_bool_attn_mask_equals_float_mask():
    _, ours = _pair("decoder_self")
    query, _, _ = _inputs("decoder_self")
    t = query.size(0)
    out_float, _ = ours(query, query, query, attn_mask=_causal(t))
    out_bool, _ = ours(query, query, query, attn_mask=torch.ones(t, t, dtype=torch.bool).triu(1))
    assert torch.equal(out_float, out_bool)


def _random_layer(kind, key_dim=12, mode="collaborative", mixing_init="normal"):
    torch.manual_seed(3)
    layer = CollaborativeMultiheadAttention(
        EMBED,
        HEADS,
        self_attention=kind == "self",
        encoder_decoder_attention=kind == "cross",
        key_dim=key_dim,
        mode=mode,
        mixing_init=mixing_init,
    ).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("kernel", ["bmm", "folded", "fused", "mixgemm"])
@pytest.mark.parametrize(
    "mode,mixing_init,key_dim", [("collaborative", "normal", 12), ("concatenate", "concatenate", 8)]
)
def test_incremental_self_attention_equals_full_causal_forward(mode, mixing_init, key_dim, kernel):
    layer = _random_layer("self", key_dim, mode, mixing_init)
    layer.kernel = kernel
    query, _, _ = _inputs("self", tgt_len=6)
    full, _ = layer(query, query, query, attn_mask=_causal(query.size(0)), need_weights=False)
    state = {}
    steps = [layer(query[t : t + 1], None, None, incremental_state=state, need_weights=False)[0] for t in range(6)]
    assert (torch.cat(steps) - full).abs().max() <= TOL
    cache = layer._get_input_buffer(state)
    # shared keys, one copy for all heads; collaborative: [k | c], the content bias folded in
    assert cache["prev_key"].shape == (3, 6, key_dim + (HEADS if mode == "collaborative" else 0))
    assert cache["prev_value"].shape == (3, HEADS, 6, EMBED // HEADS)
    assert "prev_content_bias" not in cache


@pytest.mark.parametrize("mode,q_noise", [("collaborative", 0.0), ("collaborative", 0.1), ("concatenate", 0.0)])
def test_decoding_appends_dense_pieces_to_the_cache(monkeypatch, mode, q_noise):
    """A decoding step's keys, values and content bias are strided views of the projection's output; the cache
    appends them made dense (torch's vectorized concatenation on CUDA takes only dense inputs: the fallback made
    the collaborative decoder's step 1.3x the transformer's device time at 200 tokens), with the same results.
    Collaborative heads with the content bias folded into the keys, or in its own entry (quant noise), and
    concatenated heads."""
    torch.manual_seed(0)
    layer = CollaborativeMultiheadAttention(
        EMBED, HEADS, self_attention=True, key_dim=8, mode=mode, q_noise=q_noise, qn_block_size=4,
        mixing_init="concatenate",
    ).eval()  # fmt: skip
    query, _, _ = _inputs("self", tgt_len=5)
    full, _ = layer(query, query, query, attn_mask=_causal(query.size(0)), need_weights=False)
    inputs, cat = [], torch.cat
    state, steps = {}, []
    with torch.no_grad():
        for t in range(5):
            if t == 2:
                monkeypatch.setattr(torch, "cat", lambda ts, dim=0: inputs.extend(ts) or cat(ts, dim=dim))
            steps.append(layer(query[t : t + 1], None, None, incremental_state=state, need_weights=False)[0])
    expected = 3 * (2 + (q_noise > 0))  # steps 2-4: keys, values (and the content bias)
    assert len(inputs) == 2 * expected and all(t.is_contiguous() for t in inputs)
    assert (torch.cat(steps) - full).abs().max() <= TOL


def test_incremental_cross_attention_computes_static_keys_once(monkeypatch):
    layer = _random_layer("cross")
    query, key, padding = _inputs("cross", tgt_len=5)
    full, _ = layer(query, key, key, key_padding_mask=padding, static_kv=True)
    calls = []
    stacked_linear = projections.stacked_linear

    def counting_stacked(x, groups, *rest):  # every stacked projection, the folded decoding's included
        calls.extend(1 for group in groups for p in group if p is layer.k_proj)
        return stacked_linear(x, groups, *rest)

    monkeypatch.setattr(projections, "stacked_linear", counting_stacked)
    state = {}
    steps = [
        layer(query[t : t + 1], key, key, key_padding_mask=padding, incremental_state=state, static_kv=True)[0]
        for t in range(5)
    ]
    assert (torch.cat(steps) - full).abs().max() <= TOL
    assert len(calls) == 1


def test_reorder_incremental_state_keeps_each_hypothesis_cache():
    layer = _random_layer("self")
    query, _, _ = _inputs("self", tgt_len=4)
    state = {}
    for t in range(3):
        layer(query[t : t + 1], None, None, incremental_state=state)
    new_order = torch.tensor([2, 0, 0])
    layer.reorder_incremental_state(state, new_order)
    out_reordered, _ = layer(query[3:4, new_order], None, None, incremental_state=state)

    # reference: run the same prefix with the batch already in the new order
    reordered_query = query[:, new_order]
    state_ref = {}
    for t in range(3):
        layer(reordered_query[t : t + 1], None, None, incremental_state=state_ref)
    out_ref, _ = layer(query[3:4, new_order], None, None, incremental_state=state_ref)
    assert (out_reordered - out_ref).abs().max() <= TOL


def test_key_query_shapes_and_shared_parameters():
    layer = _random_layer("self", key_dim=12)
    assert layer.q_proj.weight.shape == layer.k_proj.weight.shape == (12, EMBED)
    assert layer.q_proj.bias is None and layer.k_proj.bias is None
    assert layer.mixing.shape == (HEADS, 12)
    assert layer.content_bias.weight.shape == (HEADS, EMBED)


@pytest.mark.parametrize("tgt_len", [7, 1])
def test_mixed_queries_reach_the_score_gemm_without_a_copy(tgt_len):
    layer = _random_layer("self", key_dim=12)
    fused = torch.randn(tgt_len, 3, 12 + 12 + EMBED + HEADS)  # T x B x outputs of the stacked projection
    # the strided q slice, as in forward, made each head's by the bmm kernel
    queries = per_head_queries(layer._head_queries(fused[..., :12]), *layer._kernel_mixing(torch.float32, None))
    assert queries.shape == (3, HEADS, tgt_len, 12)
    gemm_input = queries.reshape(3, HEADS * tgt_len, 12)  # what attention_scores hands to bmm
    assert gemm_input.data_ptr() == queries.data_ptr()  # a view, not a copy of all heads' queries
    expected = fused[..., :12].transpose(0, 1)[:, None] * layer.mixing_matrix()[None, :, None, :] * layer.scaling
    torch.testing.assert_close(queries, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(key_dim=0), "positive integer"),
        (dict(key_dim=-4), "positive integer"),
        (dict(key_dim=10, mode="concatenate"), "cannot be split into 4 heads"),
        (dict(key_dim=10, mixing_init="concatenate"), "multiple of 4"),
        (dict(key_dim=8, mode="grouped"), "unknown collaborative attention mode"),
        (dict(key_dim=8, mixing_init="zeros"), "unknown mixing init"),
        (
            dict(key_dim=8, kernel="cudnn"),
            "unknown attention kernel 'cudnn'; choose one of auto, bmm, mixgemm, fused, folded, sdpa, flash$",
        ),
    ],
)
def test_bad_layer_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CollaborativeMultiheadAttention(EMBED, HEADS, self_attention=True, **kwargs)


def test_gradients_reach_mixing_and_content_bias():
    layer = _random_layer("self").train()
    query, _, padding = _inputs("self")
    out, _ = layer(query, query, query, key_padding_mask=padding, need_weights=False)
    out.pow(2).sum().backward()
    assert layer.mixing.grad.abs().sum() > 0
    assert layer.content_bias.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kernel", ["sdpa", "folded", "flash", "mixgemm"])
@pytest.mark.parametrize("mode,key_dim", [("collaborative", 12), ("concatenate", 8)])
def test_fused_and_explicit_paths_give_the_same_gradients(mode, key_dim, kernel):
    """With kernel="sdpa" or "folded", need_weights=False takes scaled_dot_product_attention, with "mixgemm" the
    token-major GEMMs; each must train exactly like the explicit path."""
    layer = _random_layer("self", key_dim, mode, "normal" if mode == "collaborative" else "concatenate")
    layer.kernel = kernel
    query, _, padding = _inputs("self")
    grads = []
    for need_weights in (False, True):
        layer.zero_grad()
        out, _ = layer(query, query, query, key_padding_mask=padding, need_weights=need_weights)
        out.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters() if n != "k_proj.bias"})
    for name in grads[1]:
        relative = (grads[0][name] - grads[1][name]).norm() / grads[1][name].norm()
        assert relative <= 1e-5, (name, relative.item())


@pytest.mark.parametrize("mask_kind", ["causal_float", "causal_bool", "not_causal", "causal_view", "view_not_causal"])
def test_folded_kernel_reads_causal_and_other_attention_masks(mask_kind):
    """The folded kernel turns fairseq's future mask into is_causal and passes any other mask on as a mask."""
    layer = _random_layer("self", 12, "collaborative", "normal")
    query, _, padding = _inputs("self")
    t = query.size(0)
    mask = {
        "causal_float": _causal(t),
        "causal_bool": torch.ones(t, t, dtype=torch.bool).triu(1),
        "not_causal": _causal(t).masked_fill(torch.eye(t, dtype=torch.bool).roll(2, 0), float("-inf")),
        "causal_view": _causal(t + 5)[:t, :t],  # how fairseq's decoder passes its cached future mask
        "view_not_causal": torch.zeros(t + 5, t + 5).masked_fill(
            torch.eye(t + 5, dtype=torch.bool).roll(1, 1), float("-inf")
        )[:t, :t],
    }[mask_kind]
    outs = []
    for kernel in ("bmm", "folded"):
        layer.kernel = kernel
        outs.append(layer(query, query, query, key_padding_mask=padding, attn_mask=mask, need_weights=False)[0])
    assert (outs[0] - outs[1]).abs().max() <= TOL


def test_auto_kernel_is_bmm_on_the_cpu_and_picks_by_length_on_cuda():
    """``auto`` (the default) keeps the CPU on the reference kernel, bit for bit; on CUDA it takes mixgemm at MT
    lengths and for every decoding step, fused from LONG_SEQUENCE keys; where fused cannot run, auto falls back to
    folded (linear memory), an explicit kernel to bmm (also where mixgemm or fused meet concatenated heads)."""
    assert all(kernel_preferences("auto", False, t, s) == ["bmm"] for t, s in [(30, 30), (4096, 4096), (1, 4096)])
    assert kernel_preferences("auto", True, 30, 30) == kernel_preferences("auto", True, 1, 4096) == ["mixgemm", "bmm"]
    assert kernel_preferences("auto", True, 30, LONG_SEQUENCE - 1) == ["mixgemm", "bmm"]
    long = [(2, LONG_SEQUENCE), (1024, 1024), (4096, 4096), (16384, 16384)]
    assert all(kernel_preferences("auto", True, t, s) == ["fused", "folded"] for t, s in long)
    for kernel in KERNEL_NAMES[2:]:
        assert all(kernel_preferences(kernel, cuda, 30, 30) == [kernel, "bmm"] for cuda in (False, True))
    assert kernel_preferences("bmm", True, 4096, 4096) == ["bmm"]
    auto, bmm = _outputs_of("auto", "bmm")
    assert torch.equal(auto, bmm)


def _outputs_of(*kernels):
    """The same padded self-attention through each kernel: one output each."""
    layer = _random_layer("self", 12, "collaborative", "normal")
    query, _, padding = _inputs("self")
    outs = []
    for kernel in kernels:
        layer.kernel = kernel
        outs.append(layer(query, query, query, key_padding_mask=padding, need_weights=False)[0])
    return outs


def test_auto_falls_back_to_folded_where_fused_cannot_run(monkeypatch):
    """At a length where auto picks fused and fused refuses the inputs (as it does for masks other than the future
    mask, or widths over 128), the layer runs folded, not the quadratic-memory bmm."""
    import collab_fairseq.modules.attention_kernels as kernels
    import collab_fairseq.modules.collaborative_attention as attention

    preferences = kernels.kernel_preferences
    monkeypatch.setattr(attention, "kernel_preferences", lambda k, *args: preferences(k, True, 4096, 4096))
    monkeypatch.setitem(kernels.KERNELS, "fused", lambda *args, **kwargs: None)  # "cannot run these"
    calls = []
    folded = kernels.KERNELS["folded"]
    monkeypatch.setitem(kernels.KERNELS, "folded", lambda *args, **kw: calls.append(1) or folded(*args, **kw))
    auto, bmm = _outputs_of("auto", "bmm")
    assert calls == [1]  # auto's fused fell back to folded; an explicit kernel's to bmm
    assert (auto - bmm).abs().max() <= TOL


@pytest.mark.parametrize("kernel", ["bmm", "mixgemm"])
def test_a_decoding_run_keeps_the_weights_products_and_a_new_run_sees_new_weights(kernel):
    """With gradients off (fairseq-generate), a decoding run makes the stacked projection weight and the scaled
    mixing once and keeps them beside its cache, untouched by the beam reorder: later steps dispatch fewer
    operators and give the same outputs as steps that remake them (gradients on). The next run, after an update
    of the weights the way fairseq's optimizers make it (in place through ``.data``, no version bump), uses the
    new weights."""
    layer = _random_layer("self")
    layer.kernel = kernel
    query, _, _ = _inputs("self", tgt_len=4)
    new_order = torch.tensor([2, 0, 1])

    def decode(grad):
        state, outs, counts = {}, [], []
        with torch.set_grad_enabled(grad):
            for t in range(4):
                with OperatorCounter() as ops:
                    outs.append(layer(query[t : t + 1], None, None, incremental_state=state, need_weights=False)[0])
                counts.append(sum(ops.counts.values()))
                layer.reorder_incremental_state(state, new_order)
        return torch.cat(outs).detach(), counts

    remade, remade_counts = decode(grad=True)
    kept, kept_counts = decode(grad=False)
    assert torch.equal(kept, remade)
    assert kept_counts[0] == remade_counts[0]
    assert all(k < r for k, r in zip(kept_counts[1:], remade_counts[1:]))

    for p in layer.parameters():
        p.data.copy_(p.data * 1.5)
    updated, _ = decode(grad=False)
    assert torch.equal(updated, decode(grad=True)[0])
    assert not torch.allclose(updated, kept)


def test_cross_attention_cache_is_reordered_only_when_the_batch_shrinks():
    """As fairseq's MultiheadAttention: a beam reorder that keeps the batch size permutes the hypotheses of each
    sentence, whose encoder-side rows are equal, so the cross-attention cache stays as it is (same tensors, same
    next output as a reordered copy); when a finished sentence leaves the batch the cache is reordered."""
    layer = _random_layer("cross")
    query, key, padding = _inputs("cross", tgt_len=3)
    beam = 2  # each sentence's encoder output repeated per hypothesis, as fairseq-generate does
    query, key, padding = (
        query.repeat_interleave(beam, 1),
        key.repeat_interleave(beam, 1),
        padding.repeat_interleave(beam, 0),
    )

    def step(t, state, order=slice(None)):
        return layer(query[t : t + 1, order], key, key, key_padding_mask=padding, incremental_state=state,
                     static_kv=True)[0]  # fmt: skip

    state = {}
    step(0, state)
    cache = {name: cached for name, cached in layer._get_input_buffer(state).items() if cached is not None}
    assert cache["prev_value"].is_contiguous()  # or the values' GEMM would copy the kept cache at every step
    within = torch.tensor([1, 0, 2, 3, 5, 4])
    layer.reorder_incremental_state(state, within)
    assert all(layer._get_input_buffer(state)[name] is cached for name, cached in cache.items())
    copied = {name: cached.index_select(0, within) for name, cached in cache.items()}
    reference = {}
    layer._set_input_buffer(reference, copied)
    assert torch.equal(step(1, state, within), step(1, reference, within))

    shrink = torch.tensor([0, 1, 4, 5])  # the second sentence finished
    layer.reorder_incremental_state(state, shrink)
    for name, cached in cache.items():
        assert torch.equal(layer._get_input_buffer(state)[name], cached.index_select(0, shrink))


def test_flash_kernel_gives_torch_one_width_for_queries_keys_and_values(monkeypatch):
    """torch's flash attention needs queries, keys and values of one width: ``flash`` pads them to one (the values
    to the folded width, or the queries and keys where the values are wider) and cuts the output back; ``folded``
    passes the values as they are."""
    import collab_fairseq.modules.attention_kernels as kernels

    widths, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(kernels.F, "scaled_dot_product_attention", lambda q, k, v, **kw: widths.append(
        (q.size(-1), k.size(-1), v.size(-1))) or sdpa(q, k, v, **kw))  # fmt: skip
    outs = _outputs_of("folded", "flash")
    assert widths == [(16, 16, EMBED // HEADS), (16, 16, 16)]  # D_k 12 + the bias column, padded to 16
    assert (outs[0] - outs[1]).abs().max() <= TOL
    # values wider than the folded queries: zeros on queries and keys instead
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, 5, 4, generator=g),
        torch.randn(2, 1, 6, 4, generator=g),
        torch.randn(2, 3, 6, 20, generator=g),
    )
    bias, pad = torch.randn(2, 3, 6, generator=g), torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    folded, flash = (kernels.KERNELS[name](q, None, k, v, bias, pad, None, 0.0) for name in ("folded", "flash"))
    assert widths[2:] == [(8, 8, 20), (24, 24, 24)] and flash.shape == folded.shape == (2, 3, 5, 20)
    assert (flash - folded).abs().max() <= TOL
