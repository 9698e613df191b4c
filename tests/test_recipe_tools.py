"""Recipe tools: evaluate.sh scores what sacreBLEU scores; make_table on fixture runs; checkpoint averaging;
sharded evaluation."""

import json
import os
import subprocess

import pytest
import sacrebleu
import torch

from collab_fairseq.cli import average_checkpoints, make_table
from tests.helpers import REPO


def test_evaluate_sh_reports_the_bleu_sacrebleu_gives(copy_data, collab_run):
    raw, bin_dir = copy_data
    env = dict(
        os.environ,
        DATA=str(bin_dir),
        SAVE_DIR=str(collab_run),
        REFERENCE=str(raw / "test.tgt"),
        BEAM="4",
        REMOVE_BPE="none",
        META='{"run": "tiny", "heads": "collab", "key_dim": 16, "seed": 1}',
    )
    subprocess.run(["bash", str(REPO / "recipes/lib/evaluate.sh")], env=env, check=True, capture_output=True)
    result = json.load(open(collab_run / "bleu.json"))
    hyps = open(collab_run / "hypotheses.txt").read().splitlines()
    refs = open(raw / "test.tgt").read().splitlines()
    assert len(hyps) == len(refs) == result["sentences"] == 100
    assert result["sacrebleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert result["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert result["run"] == "tiny" and result["beam"] == 4


def test_evaluate_refuses_a_reference_of_another_length(copy_data, collab_run, tmp_path):
    _, bin_dir = copy_data
    short = tmp_path / "short.tgt"
    short.write_text("W1 W2\n")
    env = dict(os.environ, DATA=str(bin_dir), SAVE_DIR=str(collab_run), REFERENCE=str(short), REMOVE_BPE="none")
    proc = subprocess.run(["bash", str(REPO / "recipes/lib/evaluate.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "100 hypotheses but 1 references" in proc.stderr


def test_average_checkpoints_is_the_mean_of_the_weights(collab_run, tmp_path):
    out = tmp_path / "avg.pt"
    average_checkpoints.main(["--inputs", str(collab_run), "--num-update-checkpoints", "2", "--output", str(out)])
    paths = average_checkpoints.last_checkpoints(str(collab_run), 2)
    assert [p.rsplit("_", 1)[1] for p in paths] == ["200.pt", "100.pt"]  # checkpoint_EPOCH_UPDATES.pt, newest first
    models = [torch.load(p, map_location="cpu")["model"] for p in paths]
    averaged = torch.load(out, map_location="cpu")["model"]
    key = "encoder.layers.0.self_attn.mixing"
    assert torch.allclose(averaged[key], (models[0][key] + models[1][key]) / 2, atol=1e-7)
    with pytest.raises(ValueError, match="need 50"):
        average_checkpoints.last_checkpoints(str(collab_run), 50)


def _fixture_run(root, name, heads, key_dim, seed, bleu, valid_losses, params):
    run = root / name
    run.mkdir()
    meta = {
        "run": name,
        "heads": heads,
        "key_dim": key_dim,
        "seed": seed,
        "tag": "",
        "sacrebleu": bleu,
        "checkpoint": str(run / "gone.pt"),
    }
    (run / "bleu.json").write_text(json.dumps(meta))
    log = [f"2026-11-25 | INFO | fairseq_cli.train | num. shared model params: {params:,} (num. trained: {params:,})"]
    log += [
        f"| valid | epoch 00{i} | valid on 'valid' subset | loss {v} | nll_loss 1.0" for i, v in enumerate(valid_losses)
    ]
    log += [
        "| INFO | train | epoch 001 | loss 4.0 | wps 1000 | ups 1 | num_updates 900 | lr 1",
        "| INFO | train | epoch 002 | loss 3.0 | wps 3000 | ups 1 | num_updates 1800 | lr 1",
    ]
    (run / "train.log").write_text("\n".join(log) + "\n")


def test_make_table_groups_seeds_and_counts_attention_parameters(tmp_path):
    _fixture_run(tmp_path, "transformer_dk512_s1", "transformer", 512, 1, 36.0, [4.5, 4.1], 35_639_296)
    _fixture_run(tmp_path, "collab_dk128_s1", "collab", 128, 1, 30.0, [4.6, 4.3], 28_589_056)
    _fixture_run(tmp_path, "collab_dk128_s2", "collab", 128, 2, 34.0, [4.4, 4.5], 28_589_056)
    out = tmp_path / "table.md"
    make_table.main([str(tmp_path), "--attention-layout", "512,4,18", "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[2] == "| transformer | 512 | - | 1 | 36.00 | 4.100 | 18,911,232 | 35,639,296 | 2000 | 1800 |"
    assert lines[3] == (
        "| collab | 128 | - | 2 | 32.00 (30.00-34.00) | 4.350 (4.300-4.400) | 11,860,992 | 28,589,056 | 2000 | 1800 |"
    )


def test_sharded_evaluation_equals_one_shard(copy_data, collab_run, tmp_path):
    raw, bin_dir = copy_data
    results = []
    for shards in ("1", "3"):
        out = tmp_path / f"bleu{shards}.json"
        subprocess.run(
            [
                "python3",
                "-m",
                "collab_fairseq.cli.evaluate",
                "--data",
                str(bin_dir),
                "--checkpoint",
                str(collab_run / "checkpoint_last.pt"),
                "--reference",
                str(raw / "test.tgt"),
                "--remove-bpe",
                "none",
                "--beam",
                "4",
                "--shards",
                shards,
                "--out",
                str(out),
                "--hypotheses",
                str(tmp_path / f"hyp{shards}.txt"),
            ],
            check=True,
            capture_output=True,
        )
        results.append(json.load(open(out)))
    assert (tmp_path / "hyp1.txt").read_text() == (tmp_path / "hyp3.txt").read_text()
    assert results[0]["sacrebleu"] == results[1]["sacrebleu"] and results[1]["shards"] == 3
