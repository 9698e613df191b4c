"""fairseq's CLIs with --user-dir collab_fairseq: preprocess -> train -> generate/interactive, resume, the
attention kernel as a model option, hydra; the checks that need a fresh Python run it as a subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from collab_fairseq.modules import CollaborativeMultiheadAttention
from tests.helpers import (
    TINY_MODEL,
    TRAIN_FLAGS,
    USER_DIR,
    assert_mostly_copies,
    fairseq_generate,
    fairseq_interactive,
    fairseq_train,
    parse_bleu,
    run_cli,
)


def _train(bin_dir, save_dir, *extra):
    return fairseq_train(bin_dir, "--user-dir", USER_DIR, "--save-dir", save_dir, *TINY_MODEL, *TRAIN_FLAGS, *extra)


def _generate(bin_dir, checkpoint, *extra):
    return fairseq_generate(
        bin_dir, "--user-dir", USER_DIR, "--path", checkpoint, "--beam", "4", "--batch-size", "64", *extra
    )


def test_collab_model_learns_the_task_and_beam_search_translates(copy_data, collab_run):
    _, bin_dir = copy_data
    log = (collab_run / "train.log").read_text()
    assert "collaborative attention: mode=collaborative D_k=16" in log and "kernel=auto content_bias=True" in log

    state = torch.load(collab_run / "checkpoint_last.pt", map_location="cpu")  # safe loading, allowlisted types
    weights = state["model"]
    assert weights["encoder.layers.0.self_attn.q_proj.weight"].shape == (16, 64)
    assert weights["decoder.layers.1.encoder_attn.mixing"].shape == (4, 16)
    assert "encoder.layers.0.self_attn.content_bias.weight" in weights
    assert state["cfg"]["model"].collab_attention_kernel == "auto"

    bleu = parse_bleu(_generate(bin_dir, collab_run / "checkpoint_last.pt"))
    assert bleu > 80, f"collab model did not learn the mapped-copy task: BLEU {bleu}"


def _hypotheses(generate_output):
    return sorted(line for line in generate_output.splitlines() if line.startswith("H-"))


def test_beam_search_reorders_the_encoder_side_cache_only_when_the_batch_shrinks(copy_data, collab_run, monkeypatch):
    """The cross-attention cache is left as it is while the batch keeps its size (fairseq's own layer does the same)
    and reordered when finished sentences leave it: both happen here, and the hypotheses are those of a layer
    that reorders every cache at every step."""
    _, bin_dir = copy_data
    checkpoint = collab_run / "checkpoint_last.pt"
    reorder = CollaborativeMultiheadAttention.reorder_incremental_state
    kept, shrunk = [], []

    def recording(self, incremental_state, new_order):
        cached = self._get_input_buffer(incremental_state).get("prev_key")
        if self.encoder_decoder_attention and cached is not None:
            (kept if cached.size(0) == new_order.size(0) else shrunk).append(new_order.size(0))
        return reorder(self, incremental_state, new_order)

    monkeypatch.setattr(CollaborativeMultiheadAttention, "reorder_incremental_state", recording)
    ours = _hypotheses(_generate(bin_dir, checkpoint))
    assert kept and shrunk

    def every_cache_every_step(self, incremental_state, new_order):
        buffer = self._get_input_buffer(incremental_state)
        for name, cached in buffer.items():
            if cached is not None:
                buffer[name] = cached.index_select(0, new_order)
        return self._set_input_buffer(incremental_state, buffer)

    monkeypatch.setattr(CollaborativeMultiheadAttention, "reorder_incremental_state", every_cache_every_step)
    assert _hypotheses(_generate(bin_dir, checkpoint)) == ours


@pytest.mark.parametrize("kernel", ["sdpa", "folded"])
def test_the_kernel_is_a_model_option_saved_and_overridable(copy_data, collab_run, tmp_path, kernel):
    _, bin_dir = copy_data
    log = _train(
        bin_dir,
        tmp_path,
        *"--arch transformer_collab --collab-key-dim 16 --max-update 2".split(),
        "--collab-attention-kernel",
        kernel,
    )
    assert f"kernel={kernel}" in log
    assert (
        torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["cfg"]["model"].collab_attention_kernel
        == kernel
    )
    # a bmm-trained model decodes with another kernel, and translates the same
    models, _ = checkpoint_utils.load_model_ensemble(
        [str(collab_run / "checkpoint_last.pt")], arg_overrides={"collab_attention_kernel": kernel}
    )
    kernels = {m.kernel for m in models[0].modules() if isinstance(m, CollaborativeMultiheadAttention)}
    assert kernels == {kernel}
    override = f"{{'collab_attention_kernel': '{kernel}'}}"
    assert parse_bleu(_generate(bin_dir, collab_run / "checkpoint_last.pt", "--model-overrides", override)) == (
        parse_bleu(_generate(bin_dir, collab_run / "checkpoint_last.pt"))
    )


def test_concatenate_baseline_trains_and_generates(copy_data, tmp_path):
    _, bin_dir = copy_data
    _train(
        bin_dir,
        tmp_path,
        *"--arch transformer_collab --collab-key-dim 16 --collab-mode concatenate".split(),
        "--max-update",
        "20",
    )
    weights = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
    assert weights["encoder.layers.0.self_attn.k_proj.weight"].shape == (16, 64)
    assert "encoder.layers.0.self_attn.mixing" not in weights
    bleu = parse_bleu(_generate(bin_dir, tmp_path / "checkpoint_last.pt"))
    assert 0.0 <= bleu <= 100.0


def test_resume_continues_from_last_checkpoint(copy_data, tmp_path):
    _, bin_dir = copy_data
    args = ["--arch", "transformer_collab", "--collab-key-dim", "16", "--collab-attentions", "encoder_self"]
    _train(bin_dir, tmp_path, *args, "--max-update", "8")
    log = _train(bin_dir, tmp_path, *args, "--max-update", "16")
    assert "@ 8 updates" in log and "Loaded checkpoint" in log
    assert "num_updates 16" in log
    assert torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["optimizer_history"][-1]["num_updates"] == 16
    # only the chosen attention is collaborative
    weights = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
    assert "encoder.layers.0.self_attn.mixing" in weights
    assert weights["decoder.layers.0.self_attn.q_proj.weight"].shape == (64, 64)

    restored = tmp_path / "restored"
    log = _train(bin_dir, restored, *args, "--max-update", "20", "--restore-file", tmp_path / "checkpoint_last.pt")
    assert "@ 16 updates" in log and "num_updates 20" in log


def test_a_run_resumed_mid_epoch_ends_where_an_uninterrupted_one_does(copy_data, tmp_path):
    """Kill-and-resume keeps the seed's promise: fairseq seeds each update (dropout) from --seed and the update
    number, and resumes the data iterator where its checkpoint was saved, mid-epoch included (the quickstart saves
    every 100 updates). Only the logged loss averages restart at the resume."""
    _, bin_dir = copy_data
    args = ["--arch", "transformer_collab", "--collab-key-dim", "16", "--dropout", "0.1", "--attention-dropout", "0.1"]
    _train(bin_dir, tmp_path / "straight", *args, "--max-update", "9")
    _train(bin_dir, tmp_path / "resumed", *args, "--max-update", "3")
    log = _train(bin_dir, tmp_path / "resumed", *args, "--max-update", "9")
    assert "@ 3 updates" in log
    straight, resumed = (torch.load(tmp_path / run / "checkpoint_last.pt")["model"] for run in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_interactive_translates_stdin(copy_data, collab_run):
    _, bin_dir = copy_data
    out = fairseq_interactive(
        bin_dir,
        "--user-dir",
        USER_DIR,
        "--path",
        collab_run / "checkpoint_last.pt",
        "--source-lang",
        "src",
        "--target-lang",
        "tgt",
        "--beam",
        "4",
        stdin="w1 w2 w3\nw4 w5\n",
    )
    hypotheses = [line.split("\t") for line in out.splitlines() if line.startswith("H-")]
    assert [h[0] for h in hypotheses] == ["H-0", "H-1"]
    assert_mostly_copies([h[2] for h in hypotheses], ["W1 W2 W3", "W4 W5"])


def test_fairseq_cli_processes_train_and_name_the_user_dir_a_checkpoint_needs(copy_data, tmp_path):
    """The installed CLI in a fresh process (no collab_fairseq imported beforehand): trains a collab model;
    its checkpoint opened without --user-dir fails naming what it needs."""
    _, bin_dir = copy_data
    run_cli(
        "train",
        bin_dir,
        "--user-dir",
        USER_DIR,
        "--save-dir",
        tmp_path,
        "--arch",
        "transformer_collab",
        "--collab-key-dim",
        "8",
        *TINY_MODEL,
        *TRAIN_FLAGS,
        "--max-update",
        "2",
    )
    out = run_cli("generate", bin_dir, "--path", tmp_path / "checkpoint_last.pt", check=False)
    assert out.returncode != 0
    assert "collab_fairseq.needs_user_dir.TransformerCollabArgs" in out.stdout
    out = run_cli("generate", bin_dir, "--user-dir", USER_DIR, "--path", tmp_path / "checkpoint_last.pt")
    assert "Generate test with beam=5" in out.stdout
    # fairseq's own deprecated calls into hydra and torch (fairseq_warnings.py) print nothing
    for deprecation in ("is no longer experimental", "version_base", "package header", "strict flag", "torch.cuda.amp"):
        assert deprecation not in out.stdout, deprecation


def test_hydra_train_with_shipped_config(copy_data, tmp_path):
    _, bin_dir = copy_data
    config_dir = Path(USER_DIR) / "config"
    overrides = [
        f"task.data={bin_dir}",
        f"common.user_dir={USER_DIR}",
        f"checkpoint.save_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "optimization.max_update=4",
        "dataset.num_workers=0",
        "model.collab_key_dim=16",
        "model.collab_attention_kernel=folded",
        "+model.encoder_layers=1",
        "+model.decoder_layers=1",
        "+model.encoder_embed_dim=32",
        "+model.decoder_embed_dim=32",
        "+model.encoder_ffn_embed_dim=32",
        "+model.decoder_ffn_embed_dim=32",
        "+model.encoder_attention_heads=4",
        "+model.decoder_attention_heads=4",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fairseq_cli.hydra_train",
            "--config-dir",
            config_dir,
            "--config-name",
            "transformer_collab_iwslt_de_en",
            *overrides,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "kernel=folded" in proc.stdout
    weights = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
    assert weights["encoder.layers.0.self_attn.q_proj.weight"].shape == (16, 32)
    assert weights["decoder.layers.0.encoder_attn.mixing"].shape == (4, 16)
    bleu = parse_bleu(_generate(bin_dir, tmp_path / "checkpoint_last.pt"))
    assert 0.0 <= bleu <= 100.0
