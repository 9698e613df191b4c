"""collab-reparametrize / collab-analyze: exactness at full D_k, CP reconstruction, low-rank conversion, bad input."""

import pytest
import torch
from fairseq import checkpoint_utils

from collab_fairseq.cli import analyze, reparametrize
from collab_fairseq.reparam.cp import AttentionWeights, cp_decompose, head_products, reparametrize_attention
from tests.helpers import TINY_MODEL, TRAIN_FLAGS, USER_DIR, fairseq_generate, fairseq_train, load_model

HEADS, EMBED = 4, 64


def _outputs(ckpt, bin_dir):
    """Decoder output (log-probs) of the checkpoint's model on a fixed batch, float32, eval mode."""
    model = load_model(ckpt, bin_dir)
    torch.manual_seed(0)
    src = torch.randint(4, 40, (3, 9))
    prev = torch.randint(4, 40, (3, 7))
    with torch.no_grad():
        return model(src, torch.full((3,), 9), prev)[0]


def test_full_key_dim_conversion_gives_the_same_outputs(copy_data, transformer_checkpoint, tmp_path):
    _, bin_dir = copy_data
    out = tmp_path / "collab64.pt"
    assert reparametrize.main([str(transformer_checkpoint), str(out), "--key-dim", "64", "--device", "cpu"]) == 0
    state = torch.load(out, map_location="cpu")
    assert state["cfg"]["model"].arch == "transformer_collab_iwslt_de_en"
    assert state["model"]["encoder.layers.0.self_attn.mixing"].shape == (HEADS, 64)
    assert "last_optimizer_state" not in state
    assert (_outputs(out, bin_dir) - _outputs(transformer_checkpoint, bin_dir)).abs().max() <= 1e-5


def test_reduced_key_dim_checkpoint_generates_and_fine_tunes(copy_data, transformer_checkpoint, tmp_path):
    _, bin_dir = copy_data
    out = tmp_path / "collab16.pt"
    report = tmp_path / "report.json"
    assert reparametrize.main([str(transformer_checkpoint), str(out), "--key-dim", "16", "--report", str(report)]) == 0
    assert torch.load(out, map_location="cpu")["model"]["decoder.layers.1.encoder_attn.q_proj.weight"].shape == (16, 64)
    assert __import__("json").load(open(report))["source_fp16_loss_scale"] is None  # trained in fp32
    assert reparametrize.fp16_loss_scale({"last_optimizer_state": {"loss_scale": 16.0, "state": {}}}) == 16.0
    gen = fairseq_generate(bin_dir, "--user-dir", USER_DIR, "--path", out, "--beam", "2", "--batch-size", "50")
    assert "Generate test with beam=2" in gen
    train = _finetune(bin_dir, out, tmp_path / "ft", "--max-update", "3")
    assert (tmp_path / "ft" / "checkpoint_last.pt").exists()
    assert f"Loaded checkpoint {out}" in train and "num_updates 3" in train
    tuned = torch.load(tmp_path / "ft" / "checkpoint_last.pt", map_location="cpu")["model"]
    assert tuned["encoder.layers.0.self_attn.mixing"].shape == (HEADS, 16)


def _finetune(bin_dir, checkpoint, save_dir, *extra):
    """fairseq-train --finetune-from-model CHECKPOINT with D_k = 16 (the converted models of these tests)."""
    model = f"--user-dir {USER_DIR} --arch transformer_collab_iwslt_de_en --collab-key-dim 16 --share-all-embeddings"
    return fairseq_train(
        bin_dir,
        *model.split(),
        "--finetune-from-model",
        checkpoint,
        "--save-dir",
        save_dir,
        *TINY_MODEL,
        *TRAIN_FLAGS,
        *extra,
    )


def _mixing_matrices(checkpoint, **overrides):
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)], arg_overrides=overrides)
    return {n: m.mixing_matrix().detach() for n, m in models[0].named_modules() if hasattr(m, "mixing_matrix")}


def test_a_mixing_scale_given_at_conversion_survives_loading_and_fine_tuning_without_it(
    copy_data, transformer_checkpoint, tmp_path
):
    """collab-reparametrize --mixing-lr-scale 0.1 stores P = M / 0.1 (so Adam moves M 10x slower); a model built
    with another scale (here fairseq-train --finetune-from-model without the flag) must start from the same M."""
    _, bin_dir = copy_data
    out = tmp_path / "scaled.pt"
    argv = [str(transformer_checkpoint), str(out), "--key-dim", "16", "--mixing-lr-scale", "0.1", "--n-iter", "20"]
    assert reparametrize.main(argv) == 0
    converted = _mixing_matrices(out)
    assert len(converted) == 6 and all(m.abs().amax() > 0.5 for m in converted.values())  # peak |M| = 1 per dim
    for name, mixing in _mixing_matrices(out, collab_mixing_lr_scale=1.0).items():
        torch.testing.assert_close(mixing, converted[name], rtol=1e-6, atol=0)
    _finetune(bin_dir, out, tmp_path / "ft", "--max-update", "1", "--lr", "1e-9", "--warmup-updates", "1")
    for name, mixing in _mixing_matrices(tmp_path / "ft" / "checkpoint_last.pt").items():
        torch.testing.assert_close(mixing, converted[name], rtol=0, atol=1e-6)  # one step of lr 1e-9


def test_decomposition_at_full_rank_reconstructs_the_head_products():
    torch.manual_seed(0)
    w = AttentionWeights(torch.randn(24, 20), torch.randn(24), torch.randn(24, 20), num_heads=3)
    products = head_products(w)
    mixing, a, b = cp_decompose(products, 24)
    rebuilt = torch.einsum("hr,ir,jr->hij", mixing, a, b)
    assert ((rebuilt - products).norm() / products.norm()).item() <= 1e-5


@pytest.mark.parametrize("rank", [6, 12, 18])
def test_low_rank_error_never_exceeds_per_head_truncation(rank):
    """ALS starts from the per-head truncated SVD (concatenated heads at D_k), so it can only do better."""
    torch.manual_seed(1)
    w = AttentionWeights(torch.randn(24, 20), None, torch.randn(24, 20), num_heads=3)
    products = head_products(w)
    u, s, vh = torch.linalg.svd(products)
    k = rank // 3
    truncated = u[:, :, :k] @ torch.diag_embed(s[:, :k]) @ vh[:, :k, :]
    truncation_error = ((truncated - products).norm() / products.norm()).item()
    assert reparametrize_attention(w, rank).relative_error <= truncation_error + 1e-6


def test_converted_layer_scores_equal_the_decomposed_products():
    """score_h(x, y) of the new weights = s_old * x^T CP(P_h) y + content bias, whatever the balancing."""
    torch.manual_seed(2)
    w = AttentionWeights(torch.randn(16, 12), torch.randn(16), torch.randn(16, 12), num_heads=2)
    new = reparametrize_attention(w, 6)
    x, y = torch.randn(12), torch.randn(12)
    s_new = (6 / 2) ** -0.5
    ours = s_new * torch.einsum("r,hr,r->h", new.q_weight @ x, new.mixing, new.k_weight @ y) + new.content_bias @ y
    mixing, a, b = cp_decompose(head_products(w), 6)
    expected = w.scaling * torch.einsum("i,hij,j->h", x, torch.einsum("hr,ir,jr->hij", mixing, a, b), y)
    b_q = w.q_bias.view(2, 1, 8)
    expected = expected + w.scaling * (torch.bmm(b_q, w.k_weight.view(2, 8, 12)).squeeze(1) @ y)
    assert torch.allclose(ours, expected, atol=1e-4)
    assert torch.allclose(new.mixing.abs().amax(dim=0), torch.ones(6))  # balanced: peak |M| = 1 per component


def test_analyze_reports_energy_dimensions(transformer_checkpoint, tmp_path, capsys):
    assert analyze.main([str(transformer_checkpoint), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "encoder.layers.0.self_attn" in out and "max over layers for 90% of the energy: D_k =" in out
    rows = __import__("json").load(open(tmp_path / "s.json"))
    assert len(rows) == 6  # 2 encoder self + 2 decoder self + 2 cross
    for row in rows:
        assert 1 <= row["dims"]["0.9"] <= row["dims"]["0.95"] <= row["dims"]["0.99"] <= HEADS * 16


def _error(capsys, argv):
    assert reparametrize.main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_are_refused_before_any_output(transformer_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.pt"
    assert "out of range" in _error(capsys, [str(transformer_checkpoint), str(out), "--key-dim", "65"])
    assert "positive integer" in _error(capsys, [str(transformer_checkpoint), str(out), "--key-dim", "0"])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(transformer_checkpoint.read_bytes()[:5000])
    assert "truncated or corrupted" in _error(capsys, [str(broken), str(out), "--key-dim", "16"])
    assert "no checkpoint at" in _error(capsys, [str(tmp_path / "missing.pt"), str(out), "--key-dim", "16"])
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    out.write_text("keep me")
    assert "pass --force" in _error(capsys, [str(transformer_checkpoint), str(out), "--key-dim", "16"])
    assert out.read_text() == "keep me"


def test_unsupported_and_already_collaborative_models_are_refused(transformer_checkpoint, tmp_path, capsys):
    state = torch.load(transformer_checkpoint, map_location="cpu")
    state["cfg"]["model"].arch = "lstm"
    torch.save(state, tmp_path / "lstm.pt")
    assert "unsupported architecture 'lstm'" in _error(
        capsys, [str(tmp_path / "lstm.pt"), str(tmp_path / "o.pt"), "--key-dim", "16"]
    )
    collab = tmp_path / "collab.pt"
    assert reparametrize.main([str(transformer_checkpoint), str(collab), "--key-dim", "32"]) == 0
    assert "already a collaborative" in _error(capsys, [str(collab), str(tmp_path / "o2.pt"), "--key-dim", "16"])


def test_per_layer_key_dims_and_error_target_choose_each_layer(copy_data, transformer_checkpoint, tmp_path):
    _, bin_dir = copy_data
    fixed = tmp_path / "fixed.pt"
    argv = [
        str(transformer_checkpoint),
        str(fixed),
        "--key-dim",
        "32",
        "--layer-key-dims",
        "encoder_self:1=16,decoder_self:0=8",
    ]
    assert reparametrize.main(argv) == 0
    state = torch.load(fixed, map_location="cpu")
    assert state["cfg"]["model"].collab_layer_key_dims == "decoder_self:0=8,encoder_self:1=16"
    assert state["model"]["encoder.layers.1.self_attn.q_proj.weight"].shape == (16, EMBED)
    assert state["model"]["decoder.layers.0.self_attn.mixing"].shape == (HEADS, 8)
    assert state["model"]["decoder.layers.1.self_attn.mixing"].shape == (HEADS, 32)
    fairseq_generate(bin_dir, "--user-dir", USER_DIR, "--path", fixed, "--beam", "2", "--batch-size", "50")

    target = tmp_path / "target.pt"
    report = tmp_path / "report.json"
    argv = [str(transformer_checkpoint), str(target), "--max-error", "0.3", "--report", str(report), "--n-iter", "20"]
    assert reparametrize.main(argv) == 0
    rows = __import__("json").load(open(report))["layers"]
    for row in rows:  # each layer: the smallest multiple of H meeting the target
        assert row["relative_error"] <= 0.3 and row["key_dim"] % HEADS == 0
        if row["key_dim"] > HEADS:
            weights = torch.load(transformer_checkpoint, map_location="cpu")["model"]
            prefix = row["layer"]
            w = AttentionWeights(
                weights[f"{prefix}.q_proj.weight"].float(), None, weights[f"{prefix}.k_proj.weight"].float(), HEADS
            )
            assert reparametrize_attention(w, row["key_dim"] - HEADS, n_iter=20).relative_error > 0.3
    fairseq_generate(bin_dir, "--user-dir", USER_DIR, "--path", target, "--beam", "2", "--batch-size", "50")


def test_a_key_dim_that_does_not_split_into_the_heads_converts_to_a_loadable_checkpoint(
    copy_data, transformer_checkpoint, tmp_path
):
    """D_k = 30 with 4 heads (and one layer at 30 through --layer-key-dims): the CP conversion needs no split, so the
    checkpoint must load where fairseq builds the model from its stored options."""
    _, bin_dir = copy_data
    for name, flags in [
        ("all30.pt", ["--key-dim", "30"]),
        ("one30.pt", ["--key-dim", "16", "--layer-key-dims", "encoder_self:0=30"]),
    ]:
        out = tmp_path / name
        assert reparametrize.main([str(transformer_checkpoint), str(out), *flags, "--n-iter", "10"]) == 0
        assert torch.load(out)["cfg"]["model"].collab_mixing_init == "normal"
        gen = fairseq_generate(bin_dir, "--user-dir", USER_DIR, "--path", out, "--beam", "2", "--batch-size", "50")
        assert "Generate test with beam=2" in gen
    assert torch.load(tmp_path / "one30.pt")["model"]["encoder.layers.0.self_attn.q_proj.weight"].shape == (30, EMBED)


def test_bad_output_paths_are_refused_before_the_decomposition(transformer_checkpoint, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the decomposition started")

    monkeypatch.setattr(reparametrize, "reparametrize_checkpoint", no_work)
    (tmp_path / "a_file").write_text("")
    for output, extra in [
        (tmp_path / "a_file" / "out.pt", []),
        ("/proc/out.pt", []),
        (tmp_path / "out.pt", ["--report", str(tmp_path / "a_file" / "report.json")]),
    ]:
        err = _error(capsys, [str(transformer_checkpoint), str(output), "--key-dim", "16", *extra])
        assert "cannot write" in err and "choose another path" in err
    assert not (tmp_path / "out.pt").exists()


def test_converted_checkpoints_and_reports_have_the_mode_of_a_plain_file(transformer_checkpoint, tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        out, report = tmp_path / "out.pt", tmp_path / "new_dir" / "report.json"
        argv = [str(transformer_checkpoint), str(out), "--key-dim", "16", "--n-iter", "5", "--report", str(report)]
        assert reparametrize.main(argv) == 0
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644 and report.stat().st_mode & 0o777 == 0o644


def test_analyze_refuses_a_checkpoint_without_transformer_attention(transformer_checkpoint, tmp_path, capsys):
    state = torch.load(transformer_checkpoint)
    state["cfg"]["model"].arch = "lstm"
    torch.save(state, tmp_path / "lstm.pt")
    assert analyze.main([str(tmp_path / "lstm.pt")]) == 2
    assert "unsupported architecture 'lstm'" in capsys.readouterr().err


def test_analyze_says_how_to_get_matplotlib_before_any_work(transformer_checkpoint, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )
    monkeypatch.setattr(analyze, "analyze", lambda path: pytest.fail("analysed before refusing"))
    with pytest.raises(SystemExit) as exit_:
        analyze.main([str(transformer_checkpoint), "--plot", str(tmp_path / "s.png")])
    assert exit_.value.code == 2 and "--plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err
