"""The WMT14 pipeline offline, end to end on small WMT-format files: prepare -> train.sh -> evaluate.sh -> table."""

import json
import os
import subprocess

from tests.helpers import REPO
from tests.test_data_prep import wmt_raw  # noqa: F401  (fixture)

TINY = (
    "--encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32 "
    "--encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 4 --decoder-attention-heads 4 "
    "--num-workers 0"
)


def _bash(script, env):
    proc = subprocess.run(["bash", str(REPO / script)], env={**os.environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return proc


def test_wmt14_prepare_train_evaluate_table_offline(wmt_raw, tmp_path):  # noqa: F811
    data = tmp_path / "wmt"
    prep = subprocess.run(
        ["bash", str(REPO / "data-prep/prepare-wmt14-en-de.sh"), "--raw-dir", str(wmt_raw), "--out-dir", str(data),
         "--vocab-size", "300", "--workers", "1"], capture_output=True, text=True,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-3000:]
    runs = tmp_path / "runs"
    common = dict(DATA=str(data / "bin"), FP16="0", MAX_UPDATE="4", MAX_TOKENS="2048", TOKENS_PER_UPDATE="4096",
                  SAVE_INTERVAL_UPDATES="1", EXTRA=TINY)  # fmt: skip
    for heads, key_dim in [("transformer", ""), ("collab", "16")]:
        run = runs / f"{heads}_dk{key_dim or 32}_s1"
        log = _bash(
            "recipes/wmt14_en_de/train.sh", {**common, "HEADS": heads, "KEY_DIM": key_dim, "SAVE_DIR": str(run)}
        )
        assert "1 GPU(s) x 2048 tokens x update-freq 2 = 4096 tokens/update" in log.stderr
        meta = json.dumps({"run": run.name, "heads": heads, "key_dim": int(key_dim or 32), "seed": 1})
        _bash("recipes/wmt14_en_de/evaluate.sh", dict(DATA=str(data / "bin"), SAVE_DIR=str(run), AVERAGE_LAST="2",
              META=meta, GENERATE_ARGS="--max-len-a 0 --max-len-b 4"))  # fmt: skip
        result = json.load(open(run / "bleu.json"))
        assert result["sentences"] == 3003 and result["beam"] == 4 and result["lenpen"] == 0.6
        assert result["checkpoint"].endswith("averaged_last2.pt")
        assert "tokenized_bleu_compound_split" in result
    table = subprocess.run(["python3", "-m", "collab_fairseq.cli.make_table", str(runs), "--out", str(tmp_path / "t.md")],
                           capture_output=True, text=True, check=True)  # fmt: skip
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[2].startswith("| transformer | 32 | - | 1 |") and lines[3].startswith("| collab | 16 | - | 1 |")
    assert table.returncode == 0


def test_multi30k_default_collab_recipe_warm_starts_and_trains_the_rest(copy_data, tmp_path):
    """The default recipe of collaborative heads (results/collab_quality.md): fairseq's transformer for
    WARM_START updates, collab-reparametrize to D_k, then the collaborative model for the rest, with the
    warm-up continued; in the same sweep a transformer row trains as it is (the warm start is for collab rows)."""
    raw, bin_dir = copy_data
    tiny = TINY.replace("--num-workers 0", "--num-workers 0 --log-interval 1")
    runs = tmp_path / "runs"
    env = dict(DATA=str(bin_dir), FP16="0", MAX_UPDATE="6", WARMUP="5", MAX_TOKENS="2048", TOKENS_PER_UPDATE="2048",
               EXTRA=tiny, WARM_START_EXTRA=tiny, WARM_START="3", PATIENCE="50", RUNS_DIR=str(runs), TABLE="", PLOT="",
               REFERENCE=str(raw / "test.tgt"), REMOVE_BPE="none", GENERATE_ARGS="--max-len-a 0 --max-len-b 5")  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "recipes/multi30k_en_de/sweep.sh"), "collab:16:1", "transformer:32:1"],
                          env={**os.environ, **env}, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs / "collab_dk16_ws3_s1"
    warm = (run / "warm_start" / "train.log").read_text()
    assert "arch='transformer_iwslt_de_en'" in warm and "num_updates 3" in warm and "patience=-1" in warm
    log = (run / "train.log").read_text()
    assert "finetune_from_model='" in log and "collab_key_dim=16" in log and "patience=50" in log
    assert "warmup_updates=2" in log and "warmup_init_lr=0.0006" in log  # lr(3) of the single 5-update warm-up
    assert "num_updates 3" in log  # 3 + 3 = MAX_UPDATE
    assert json.load(open(run / "bleu.json"))["tag"] == "_ws3"
    assert (
        len(json.load(open(run / "warm_start" / "reparametrize.json"))["layers"]) == 3
    )  # 1 encoder self, 1 decoder self, 1 cross
    plain = runs / "transformer_dk32_s1"
    assert not (plain / "warm_start").exists() and "num_updates 6" in (plain / "train.log").read_text()
    assert json.load(open(plain / "bleu.json"))["sentences"] > 0


def test_failed_training_names_the_log_and_how_to_resume(copy_data, tmp_path):
    _, bin_dir = copy_data
    env = dict(DATA=str(bin_dir), HEADS="transformer", FP16="0", SAVE_DIR=str(tmp_path / "run"), EXTRA="--no-such-flag")
    proc = subprocess.run(["bash", str(REPO / "recipes/multi30k_en_de/train.sh")], env={**os.environ, **env},
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "unrecognized arguments: --no-such-flag" in proc.stdout
    assert f"error: fairseq-train stopped with exit status {proc.returncode} ({tmp_path}/run/train.log" in proc.stderr
    assert "re-running the same command resumes from scratch (no checkpoint was saved yet)" in proc.stderr


def test_the_effective_batch_is_kept_on_any_gpu_count(copy_data, tmp_path):
    """update-freq and the per-GPU batch follow the world size (GPUs x NNODES; NNODES stands in for GPUs here,
    and a bad flag stops fairseq right after train.sh has printed its batch arithmetic)."""
    _, bin_dir = copy_data
    for nnodes, tokens, expected in [
        ("1", "4096", "1 GPU(s) x 4096 tokens x update-freq 8 = 32768 tokens/update"),
        ("2", "4096", "2 GPU(s) x 4096 tokens x update-freq 4 = 32768 tokens/update"),
        ("3", "4096", "3 GPU(s) x 3641 tokens x update-freq 3 = 32769 tokens/update"),
        ("2", "8192", "2 GPU(s) x 4096 tokens x update-freq 1 = 8192 tokens/update"),  # Multi30k's batch
    ]:
        target = "8192" if expected.endswith("= 8192 tokens/update") else "32768"
        env = dict(DATA=str(bin_dir), HEADS="transformer", SAVE_DIR=str(tmp_path / nnodes / tokens), NNODES=nnodes,
                   MAX_TOKENS=tokens, TOKENS_PER_UPDATE=target, EXTRA="--no-such-flag")  # fmt: skip
        proc = subprocess.run(["bash", str(REPO / "recipes/wmt14_en_de/train.sh")], env={**os.environ, **env},
                              capture_output=True, text=True)  # fmt: skip
        assert expected in proc.stderr, proc.stderr[-2000:]
