"""Recipe tools: evaluate.sh scores what sacreBLEU scores; make_table on fixture runs; checkpoint averaging;
sharded evaluation."""

import json
import os
import subprocess

import pytest
import sacrebleu
import torch

from collab_fairseq.cli import average_checkpoints, make_table
from collab_fairseq.provenance import code_hash
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


def _fixture_run(root, name, heads, key_dim, seed, bleu, valid_losses, params, code=None):
    run = root / name
    run.mkdir()
    meta = {
        "code": code or code_hash(),
        "commit": "abc123",
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
    assert "words/s" not in lines[0]  # a sweep's runs share GPUs: their speeds compare nothing
    assert lines[2] == "| transformer | 512 | - | 1 | 36.00 | 4.100 | 18,911,232 | 35,639,296 | 1800 |"
    assert lines[3] == (
        "| collab | 128 | - | 2 | 32.00 (30.00-34.00) | 4.350 (4.300-4.400) | 11,860,992 | 28,589,056 | 1800 |"
    )
    summary = tmp_path / "corpus_table.json"
    make_table.main([str(tmp_path), "--attention-layout", "512,4,18", "--summary", str(summary)])
    transformer, collab = json.load(open(summary))
    assert (transformer["heads"], transformer["seeds"], transformer["bleu_mean"]) == ("transformer", 1, 36.0)
    assert collab == {"heads": "collab", "key_dim": 128, "tag": "", "seeds": 2, "seed_list": [1, 2], "bleu_mean": 32.0,
                      "bleu_min": 30.0, "bleu_max": 34.0, "best_valid_loss_mean": 4.35, "commit": "abc123",
                      "code": code_hash(), "updates": 1800, "warm_start": None,
                      "study": os.path.normpath(str(tmp_path))}  # fmt: skip
    other = tmp_path / "other_study"
    other.mkdir()
    _fixture_run(other, "transformer_dk512_s1", "transformer", 512, 1, 35.0, [4.2], 35_639_296)
    make_table.main([str(other), "--attention-layout", "512,4,18", "--summary", str(summary)])
    make_table.main([str(tmp_path), "--attention-layout", "512,4,18", "--summary", str(summary)])  # made again
    rows = json.load(open(summary))
    assert [(r["study"], r["heads"], r["bleu_mean"]) for r in rows] == [
        (str(other), "transformer", 35.0),
        (str(tmp_path), "transformer", 36.0),
        (str(tmp_path), "collab", 32.0),
    ]  # the other study's row kept, this study's replaced, not doubled
    rows = json.load(open(tmp_path / "table.json"))
    assert {(r["run"], r["commit"], r["code"], r["updates"], r["warm_start"]) for r in rows} == {
        (name, "abc123", code_hash(), 1800, None)
        for name in ("transformer_dk512_s1", "collab_dk128_s1", "collab_dk128_s2")
    }


def test_make_table_counts_a_warm_start_s_transformer_updates_and_early_stops(tmp_path):
    _fixture_run(tmp_path, "collab_dk128_ws600_s1", "collab", 128, 1, 36.0, [4.1], 28_589_056)
    meta = json.load(open(tmp_path / "collab_dk128_ws600_s1" / "bleu.json"))
    (tmp_path / "collab_dk128_ws600_s1" / "bleu.json").write_text(json.dumps({**meta, "warm_start": 600}))
    log = tmp_path / "collab_dk128_ws600_s1" / "train.log"
    log.write_text(log.read_text().replace("num_updates 1800", "num_updates 1200"))  # the collaborative phase's log
    for seed, stop in ((1, 2800), (2, 3400)):
        run = f"transformer_dk512_s{seed}"
        _fixture_run(tmp_path, run, "transformer", 512, seed, 38.0, [4.0], 35_639_296)
        (tmp_path / run / "train.log").write_text(
            (tmp_path / run / "train.log").read_text().replace("num_updates 1800", f"num_updates {stop}")
        )
    out = tmp_path / "table.md"
    make_table.main([str(tmp_path), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[2].endswith("| 3100 (2800-3400) |") and lines[3].endswith("| 600 + 1200 |")
    warm = next(r for r in json.load(open(tmp_path / "table.json")) if r["warm_start"])
    assert (warm["updates"], warm["phase_updates"]) == (1800, 1200)


def test_closed_form_attention_parameters_count_only_the_collaborative_attentions_as_reduced():
    full, collab = 18_911_232 // 18, 11_860_992 // 18  # transformer_iwslt_de_en's layers: fairseq's, collab D_k=128
    row = {"heads": "collab", "key_dim": 128}
    assert make_table.closed_form_attention_params(row, (512, 4, 18)) == 18 * collab
    row["collab_attentions"] = ["encoder_self", "decoder_self"]  # read from the log's start-up line
    assert make_table.closed_form_attention_params(row, (512, 4, 18)) == 12 * collab + 6 * full
    line = "| collaborative attention: mode=collaborative D_k=128 attentions=encoder_decoder mixing_init=concatenate"
    assert make_table.COLLAB_ATTENTIONS.search(line).group(1) == "encoder_decoder"
    row.update(collab_attentions=None, content_bias=False)  # --collab-no-content-bias: no C_k x H per layer
    assert make_table.closed_form_attention_params(row, (512, 4, 18)) == 18 * (collab - 512 * 4)


def test_the_plot_draws_one_transformer_line_per_tag_so_controls_do_not_drag_the_baseline():
    rows = [
        {"heads": "transformer", "tag": "_uniform_all", "sacrebleu": 2.0},
        {"heads": "transformer", "tag": "_transformer_u7200", "sacrebleu": 38.0},
        {"heads": "transformer", "tag": "_transformer_u7200", "sacrebleu": 39.0},
        {"heads": "collab", "tag": "_reparam", "key_dim": 64, "sacrebleu": 39.3},
    ]
    assert make_table.baselines(rows) == {"transformer u7200": 38.5, "transformer uniform_all": 2.0}
    assert make_table.baselines([{"heads": "transformer", "sacrebleu": 37.0}]) == {"transformer": 37.0}


def test_make_table_refuses_rows_of_other_code_and_names_the_stale_ones(tmp_path, capsys):
    _fixture_run(tmp_path, "transformer_dk512_s1", "transformer", 512, 1, 36.0, [4.1], 35_639_296)
    _fixture_run(tmp_path, "collab_dk128_s1", "collab", 128, 1, 30.0, [4.3], 28_589_056, code="0123456789abcdef")
    out = tmp_path / "table.md"
    with pytest.raises(SystemExit):
        make_table.main([str(tmp_path), "--out", str(out)])
    said = capsys.readouterr().err
    assert "trained by 2 versions of collab_fairseq/" in said and "code 0123456789abcdef: collab_dk128_s1" in said
    assert "--allow-mixed-code" in said and not out.exists()
    make_table.main([str(tmp_path), "--out", str(out), "--allow-mixed-code"])
    assert (
        "stale (trained by other collab_fairseq/ code than this checkout's): collab_dk128_s1" in capsys.readouterr().err
    )
    lines = out.read_text().splitlines()
    assert lines[0].endswith("| code |") and lines[3].endswith("| 0123456789abcdef |")
    assert lines[2].endswith(f"| {code_hash()} |")


def test_evaluate_records_the_code_that_trained_the_checkpoint(tmp_path):
    from collab_fairseq.cli.evaluate import trained_by

    (tmp_path / "code.json").write_text(json.dumps({"commit": "abc", "dirty": False, "code": "feed"}))
    assert trained_by(str(tmp_path / "checkpoint_best.pt")) == {"commit": "abc", "dirty": False, "code": "feed"}
    elsewhere = trained_by(str(tmp_path / "other" / "checkpoint_best.pt"))
    assert elsewhere["code"] == code_hash() and elsewhere["code_read_at"] == "evaluation"


def test_sharded_evaluation_equals_one_shard_with_either_beam_search(copy_data, collab_run, tmp_path):
    raw, bin_dir = copy_data
    results = []
    for shards, generator in (("1", "fairseq"), ("3", "auto"), ("3", "static")):
        out = tmp_path / f"bleu{shards}{generator}.json"
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
                "--generator",
                generator,
                "--out",
                str(out),
                "--hypotheses",
                str(tmp_path / f"hyp{shards}{generator}.txt"),
            ],
            check=True,
            capture_output=True,
        )
        results.append(json.load(open(out)))
    hypotheses = [(tmp_path / f"hyp{name}.txt").read_text() for name in ("1fairseq", "3auto", "3static")]
    assert hypotheses[0] == hypotheses[1] == hypotheses[2] and len(hypotheses[0].splitlines()) == 100
    assert len({r["sacrebleu"] for r in results}) == 1 and results[1]["shards"] == 3
    assert [r["generator"] for r in results] == ["fairseq", "auto", "static"]
