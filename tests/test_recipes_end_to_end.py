"""The recipes: their plans (batch per GPU count, the warm start's phases) printed by DRY_RUN=1, and, marked
slow, the shell pipelines end to end offline on small files (WMT14: prepare -> train.sh -> evaluate.sh -> table;
Multi30k: the warm-start default)."""

import json
import os
import re
import subprocess
import sys

import pytest

from collab_fairseq.cli.warm_start_schedule import collaborative_phase
from collab_fairseq.cli.warm_start_schedule import main as schedule_main
from collab_fairseq.provenance import code_hash
from tests.helpers import REPO
from tests.test_data_prep import wmt_raw  # noqa: F401  (fixture)

TINY = (
    "--encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32 "
    "--encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 4 --decoder-attention-heads 4 "
    "--num-workers 0"
)


def _tiny_recipe_env(raw, bin_dir, max_update, extra=TINY, **more):
    """train.sh / evaluate.sh environment for the tiny mapped-copy task (fp32, one 2048-token batch per update)."""
    return dict(
        DATA=str(bin_dir),
        FP16="0",
        MAX_UPDATE=str(max_update),
        WARMUP="5",
        MAX_TOKENS="2048",
        TOKENS_PER_UPDATE="2048",
        EXTRA=extra,
        REFERENCE=str(raw / "test.tgt"),
        REMOVE_BPE="none",
        GENERATE_ARGS="--max-len-a 0 --max-len-b 5",
        **more,
    )


def _bash(script, env):
    proc = subprocess.run(["bash", str(REPO / script)], env={**os.environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return proc


@pytest.mark.slow
def test_wmt14_prepare_train_evaluate_table_offline(wmt_raw, tmp_path):  # noqa: F811
    data = tmp_path / "wmt"
    prep = subprocess.run(
        [
            "bash",
            str(REPO / "data-prep/prepare-wmt14-en-de.sh"),
            "--raw-dir",
            str(wmt_raw),
            "--out-dir",
            str(data),
            "--vocab-size",
            "300",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    runs = tmp_path / "runs"
    common = dict(
        DATA=str(data / "bin"),
        FP16="0",
        MAX_UPDATE="4",
        MAX_TOKENS="2048",
        TOKENS_PER_UPDATE="4096",
        SAVE_INTERVAL_UPDATES="1",
        EXTRA=TINY,
    )
    for heads, key_dim in [("transformer", ""), ("collab", "16")]:
        run = runs / f"{heads}_dk{key_dim or 32}_s1"
        log = _bash(
            "recipes/wmt14_en_de/train.sh", {**common, "HEADS": heads, "KEY_DIM": key_dim, "SAVE_DIR": str(run)}
        )
        assert "1 GPU(s) x 2048 tokens x update-freq 2 = 4096 tokens/update" in log.stderr
        meta = json.dumps({"run": run.name, "heads": heads, "key_dim": int(key_dim or 32), "seed": 1})
        _bash(
            "recipes/wmt14_en_de/evaluate.sh",
            dict(
                DATA=str(data / "bin"),
                SAVE_DIR=str(run),
                AVERAGE_LAST="2",
                META=meta,
                GENERATE_ARGS="--max-len-a 0 --max-len-b 4",
            ),
        )
        result = json.load(open(run / "bleu.json"))
        assert result["sentences"] == 3003 and result["beam"] == 4 and result["lenpen"] == 0.6
        assert result["checkpoint"].endswith("averaged_last2.pt")
        assert "tokenized_bleu_compound_split" in result
    table = subprocess.run(
        ["python3", "-m", "collab_fairseq.cli.make_table", str(runs), "--out", str(tmp_path / "t.md")],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[2].startswith("| transformer | 32 | - | 1 |") and lines[3].startswith("| collab | 16 | - | 1 |")
    assert table.returncode == 0


@pytest.mark.slow
def test_multi30k_default_collab_recipe_warm_starts_and_trains_the_rest(copy_data, tmp_path):
    """The default recipe of collaborative heads (results/collab_quality/README.md): fairseq's transformer for
    WARM_START updates, collab-reparametrize to D_k, then the collaborative model for the rest, with the
    warm-up continued; in the same sweep a transformer row trains as it is (the warm start is for collab rows)."""
    raw, bin_dir = copy_data
    tiny = TINY.replace("--num-workers 0", "--num-workers 0 --log-interval 1")
    runs = tmp_path / "runs"
    env = _tiny_recipe_env(
        raw,
        bin_dir,
        6,
        tiny,
        WARM_START_EXTRA=tiny,
        WARM_START="3",
        PATIENCE="50",
        RUNS_DIR=str(runs),
        TABLE=str(tmp_path / "table.md"),
        PLOT="",
        SUMMARY=str(tmp_path / "multi30k_en_de_table.json"),
    )
    proc = subprocess.run(
        ["bash", str(REPO / "recipes/multi30k_en_de/sweep.sh"), "collab:16:1", "transformer:32:1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs / "collab_dk16_ws3_s1"
    warm = (run / "warm_start" / "train.log").read_text()
    assert "arch='transformer_iwslt_de_en'" in warm and "num_updates 3" in warm and "patience=-1" in warm
    log = (run / "train.log").read_text()
    assert "finetune_from_model='" in log and "collab_key_dim=16" in log and "patience=50" in log
    assert "warmup_updates=2" in log and "warmup_init_lr=0.0006" in log  # lr(3) of the single 5-update warm-up
    assert "num_updates 3" in log  # 3 + 3 = MAX_UPDATE
    result = json.load(open(run / "bleu.json"))
    assert result["tag"] == "_ws3" and result["warm_start"] == 3
    assert result["code"] == code_hash() == json.load(open(run / "code.json"))["code"]  # who trained it
    assert json.load(open(run / "code.json"))["cudnn_attention"] == "off"  # the recipes' setting, recorded
    assert (
        len(json.load(open(run / "warm_start" / "reparametrize.json"))["layers"]) == 3
    )  # 1 encoder self, 1 decoder self, 1 cross
    plain = runs / "transformer_dk32_s1"
    assert not (plain / "warm_start").exists() and "num_updates 6" in (plain / "train.log").read_text()
    assert json.load(open(plain / "bleu.json"))["sentences"] > 0
    rows = json.load(open(tmp_path / "multi30k_en_de_table.json"))  # the table's rows, for results/CORPUS_table.json
    assert [(r["heads"], r["key_dim"], r["seeds"], r["updates"], r["warm_start"]) for r in rows] == [
        ("transformer", 32, 1, 6, None), ("collab", 16, 1, 6, 3)]  # fmt: skip
    assert rows[1]["bleu_mean"] == round(result["sacrebleu"], 2) and rows[1]["code"] == code_hash()


@pytest.mark.slow
def test_failed_training_names_the_log_and_how_to_resume(copy_data, tmp_path):
    _, bin_dir = copy_data
    env = dict(DATA=str(bin_dir), HEADS="transformer", FP16="0", SAVE_DIR=str(tmp_path / "run"), EXTRA="--no-such-flag")
    proc = subprocess.run(
        ["bash", str(REPO / "recipes/multi30k_en_de/train.sh")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "unrecognized arguments: --no-such-flag" in proc.stdout
    assert f"error: fairseq-train stopped with exit status {proc.returncode} ({tmp_path}/run/train.log" in proc.stderr
    assert "re-running the same command resumes from scratch (no checkpoint was saved yet)" in proc.stderr


FAKE_FAIRSEQ_TRAIN = """#!/usr/bin/env bash
# python3 on PATH: fairseq-train prints $FAKE_LOG and aborts as C++'s std::terminate does; the rest is the real one
if [[ "$1 $2" == "-m fairseq_cli.train" ]]; then printf '%s\\n' "$FAKE_LOG"; kill -ABRT $$; fi
exec {python} "$@"
"""


@pytest.mark.parametrize("finished", [True, False])
def test_an_abort_at_exit_after_training_finished_is_a_finished_run(tmp_path, finished):
    """fairseq's batch-prefetch thread (a daemon) can still be collating in torch when fairseq-train returns after
    --max-update mid-epoch; CPython then ends it inside a noexcept C++ frame and the process aborts (status 134)
    after "done training". train.sh takes that run as finished, and any other abort as a failure."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(FAKE_FAIRSEQ_TRAIN.format(python=sys.executable))
    (shim / "python3").chmod(0o755)
    (tmp_path / "dict.en.txt").write_text("a 1\n")
    done = "2026-12-08 01:20:34 | INFO | fairseq_cli.train | done training in 0.2 seconds"
    lines = [done] if finished else ["2026-12-08 01:20:34 | INFO | train_inner | epoch 001:      2 / 12 loss=7.048"]
    env = dict(DATA=str(tmp_path), HEADS="transformer", NGPU="1", SAVE_DIR=str(tmp_path / "run"),
               FAKE_LOG="\n".join(lines + ["terminate called without an active exception"]),
               PATH=f"{shim}:{os.environ['PATH']}")  # fmt: skip
    proc = subprocess.run(
        ["bash", str(REPO / "recipes/multi30k_en_de/train.sh")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    if finished:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "[train] warning: fairseq-train finished" in proc.stderr and "the run is complete" in proc.stderr
    else:
        assert proc.returncode == 134
        assert f"error: fairseq-train stopped with exit status 134 ({tmp_path}/run/train.log" in proc.stderr


@pytest.mark.slow
def test_a_sweep_shows_the_end_of_a_failed_runs_log(copy_data, tmp_path):
    """A sweep sends each run's output to its train.log only, so a failed run's last lines come to stderr."""
    raw, bin_dir = copy_data
    env = _tiny_recipe_env(raw, bin_dir, 2, "--no-such-flag", RUNS_DIR=str(tmp_path), TABLE="", PLOT="")
    proc = subprocess.run(
        ["bash", str(REPO / "recipes/multi30k_en_de/sweep.sh"), "transformer:32:1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert f"[sweep] transformer_dk32_s1: training failed (see {tmp_path}/transformer_dk32_s1/train.log)" in proc.stderr
    assert "unrecognized arguments: --no-such-flag" in proc.stderr  # train.sh's own output goes to the log only


def _dry_run(script, *args, check=True, **env):
    proc = subprocess.run(
        ["bash", str(REPO / script), *args], env={**os.environ, "DRY_RUN": "1", **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0 or not check, proc.stderr[-2000:]
    return proc


def _flag(command, name):
    return re.search(rf"{name} (\S+)", command).group(1)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("max_tokens,target", [(4096, 32768), (3000, 32768), (8192, 8192)])
def test_the_effective_batch_is_kept_on_any_gpu_count(gpus, max_tokens, target):
    """GPUs x update-freq x tokens per GPU reaches the target with the fewest accumulation steps and at most
    one token per GPU-step more, whatever the GPU count (NGPU counts them here, NNODES the nodes)."""
    for ngpu, nnodes in [(gpus, 1), (1, gpus)] if gpus > 1 else [(1, 1)]:
        proc = _dry_run(
            "recipes/wmt14_en_de/train.sh",
            HEADS="transformer",
            NGPU=str(ngpu),
            NNODES=str(nnodes),
            MAX_TOKENS=str(max_tokens),
            TOKENS_PER_UPDATE=str(target),
        )
        tokens, freq = int(_flag(proc.stdout, "--max-tokens")), int(_flag(proc.stdout, "--update-freq"))
        assert freq == -(-target // (max_tokens * gpus))  # ceil: the fewest steps that reach the target
        assert gpus * freq * tokens >= target and gpus * freq * (tokens - 1) < target and tokens <= max_tokens
        assert f"{gpus} GPU(s) x {tokens} tokens x update-freq {freq} = {gpus * freq * tokens}" in proc.stderr


@pytest.mark.parametrize(
    "memory_gib,gpus,auto,tokens,freq",
    [("80", 1, 16384, 16384, 2), ("80", 2, 16384, 16384, 1), ("80", 4, 16384, 8192, 1), ("38", 1, 16384, 16384, 2),
     ("37", 1, 4096, 4096, 8), ("24", 4, 4096, 4096, 2), (None, 1, 4096, 4096, 8)],
)  # fmt: skip
def test_wmt14_takes_large_steps_on_large_gpus(memory_gib, gpus, auto, tokens, freq):
    """MAX_TOKENS=auto (the WMT14 default): 16,384 tokens per GPU-step from 38 GiB a GPU, else 4,096; the update
    stays 32,768 tokens. Without GPU_MEMORY_GIB the visible GPUs are asked (here none: 4,096)."""
    env = {"GPU_MEMORY_GIB": memory_gib} if memory_gib else {"CUDA_VISIBLE_DEVICES": ""}
    proc = _dry_run("recipes/wmt14_en_de/train.sh", HEADS="transformer", NGPU=str(gpus), **env)
    assert (int(_flag(proc.stdout, "--max-tokens")), int(_flag(proc.stdout, "--update-freq"))) == (tokens, freq)
    assert f"MAX_TOKENS=auto: {auto} tokens per GPU-step" in proc.stderr
    explicit = _dry_run("recipes/wmt14_en_de/train.sh", HEADS="transformer", NGPU=str(gpus), MAX_TOKENS="4096", **env)
    assert _flag(explicit.stdout, "--max-tokens") == "4096" and "auto" not in explicit.stderr


def test_recipes_train_with_the_fast_task_when_asked():
    default = _dry_run("recipes/wmt14_en_de/train.sh", HEADS="transformer", NGPU="1").stdout
    on = _dry_run("recipes/wmt14_en_de/train.sh", HEADS="transformer", NGPU="1", FAST_TRAIN="1")
    assert _flag(on.stdout, "--task") == "translation_fast" and _flag(on.stdout, "--train-step") == "auto"
    assert "--task" not in default and "trained worse models than fairseq's step" in on.stderr


@pytest.mark.parametrize(
    "name,value", [("MAX_TOKENS", "4k"), ("MAX_TOKENS", "0"), ("GPU_MEMORY_GIB", "80GB"), ("FAST_TRAIN", "yes")]
)
def test_a_bad_batch_setting_fails_before_anything_runs(name, value, tmp_path):
    proc = _dry_run(
        "recipes/wmt14_en_de/train.sh", check=False, NGPU="1", SAVE_DIR=str(tmp_path / "run"), **{name: value}
    )
    assert proc.returncode == 2 and f"error: {name} must be" in proc.stderr and f"(got '{value}')" in proc.stderr
    assert not proc.stdout and not (tmp_path / "run").exists()


def test_the_warm_start_plan_is_transformer_then_conversion_then_collaborative_continuation(tmp_path):
    proc = _dry_run(
        "recipes/multi30k_en_de/train.sh",
        HEADS="collab",
        KEY_DIM="64",
        NGPU="1",
        SAVE_DIR=str(tmp_path / "run"),
        DATA=str(tmp_path / "bin"),
    )
    transformer, convert, collab = proc.stdout.strip().splitlines()
    assert "--arch transformer_iwslt_de_en" in transformer and _flag(transformer, "--max-update") == "600"
    assert _flag(transformer, "--save-dir") == str(tmp_path / "run" / "warm_start") and "--patience" not in transformer
    assert convert.startswith("python3 -m collab_fairseq.cli.reparametrize") and "--key-dim 64" in convert
    assert f"{tmp_path}/run/warm_start/checkpoint_last.pt {tmp_path}/run/warm_start_dk64.pt" in convert
    assert "--arch transformer_collab_iwslt_de_en --collab-key-dim 64" in collab
    assert _flag(collab, "--finetune-from-model") == f"{tmp_path}/run/warm_start_dk64.pt"
    assert [_flag(collab, f) for f in ("--max-update", "--warmup-updates", "--warmup-init-lr")] == [
        "1200",
        "400",
        "0.0006",
    ]
    # from scratch: one phase
    proc = _dry_run("recipes/multi30k_en_de/train.sh", HEADS="collab", WARM_START="", NGPU="1", DATA=str(tmp_path))
    assert len(proc.stdout.strip().splitlines()) == 1 and "--warmup-init-lr 1e-07" in proc.stdout


def test_the_collaborative_phase_starts_at_the_fp16_loss_scale_the_transformer_phase_reached(tmp_path):
    """A fresh fairseq-train starts its fp16 scaler at 128 and skips updates on overflow until it finds the scale
    again; the warm start's second phase continues at the scale collab-reparametrize read from the first phase's
    checkpoint instead, and an explicit --fp16-init-scale in EXTRA still wins."""
    run = tmp_path / "run"
    (run / "warm_start").mkdir(parents=True)
    report = {"key_dim": 64, "source_fp16_loss_scale": 8.0, "layers": []}
    (run / "warm_start" / "reparametrize.json").write_text(json.dumps(report))
    env = dict(HEADS="collab", KEY_DIM="64", NGPU="1", SAVE_DIR=str(run), DATA=str(tmp_path / "bin"))
    collab = _dry_run("recipes/multi30k_en_de/train.sh", **env).stdout.strip().splitlines()[-1]
    assert _flag(collab, "--fp16-init-scale") == "8" and "--fp16 " in collab
    collab = _dry_run("recipes/multi30k_en_de/train.sh", **env, EXTRA="--fp16-init-scale 4").stdout.splitlines()[-1]
    assert re.findall(r"--fp16-init-scale (\S+)", collab) == ["8", "4"]  # argparse keeps the last one
    collab = _dry_run("recipes/multi30k_en_de/train.sh", **env, FP16="0").stdout.splitlines()[-1]
    assert "--fp16" not in collab  # fp32 training has no loss scale
    report["source_fp16_loss_scale"] = None  # the transformer phase did not train in fp16
    (run / "warm_start" / "reparametrize.json").write_text(json.dumps(report))
    assert "--fp16-init-scale" not in _dry_run("recipes/multi30k_en_de/train.sh", **env).stdout


def test_the_collaborative_phase_continues_the_warm_up_where_the_transformer_stopped():
    phase = collaborative_phase(lr=1e-3, warmup=1000, warm_start=600, max_update=1800)
    assert phase == {"WARMUP_INIT_LR": 0.0006, "WARMUP_UPDATES": 400, "MAX_UPDATE": 1200}
    # inverse_sqrt's linear warm-up, restarted at lr(U), is the single run's warm-up shifted by U
    for u in (0, 100, 399):
        restarted = phase["WARMUP_INIT_LR"] + u * (1e-3 - phase["WARMUP_INIT_LR"]) / phase["WARMUP_UPDATES"]
        assert abs(restarted - 1e-3 * (600 + u) / 1000) < 1e-15
    for bad in (0, 1000, 1800):
        with pytest.raises(ValueError, match="must be in \\(0, min\\(WARMUP=1000, MAX_UPDATE=1800\\)\\)"):
            collaborative_phase(1e-3, 1000, bad, 1800)
    assert schedule_main(["--lr", "1e-3", "--warmup", "1000", "--warm-start", "1000", "--max-update", "1800"]) == 2


def test_a_grid_fills_the_gpus_one_run_each_round_robin(tmp_path):
    """SWEEP_GPUS gives each run of a sweep, and of the ablations, one GPU, in the grid's order, round robin."""
    env = dict(RUNS_DIR=str(tmp_path), TABLE="", SWEEP_GPUS="0 1 2", PARALLEL="4", WARM_START="")
    grid = ["collab:128:1", "collab:128:2", "transformer:512:1", "concat:64:3", "collab:64:1"]
    names = ["collab_dk128_s1", "collab_dk128_s2", "transformer_dk512_s1", "concat_dk64_s3", "collab_dk64_s1"]
    proc = _dry_run("recipes/multi30k_en_de/sweep.sh", *grid, **env)
    assert sorted(proc.stdout.splitlines()) == sorted(f"{n} CUDA_VISIBLE_DEVICES={i % 3}" for i, n in enumerate(names))
    proc = _dry_run("recipes/multi30k_en_de/ablations.sh", "frozen_mixing:1", "frozen_mixing:2", "transformer:1",
                    "warm_start600:1", **env)  # fmt: skip
    assert sorted(proc.stdout.splitlines()) == [
        "collab_dk128_frozen_mixing_s1 CUDA_VISIBLE_DEVICES=0",
        "collab_dk128_frozen_mixing_s2 CUDA_VISIBLE_DEVICES=1",
        "collab_dk128_warm_start600_s1 CUDA_VISIBLE_DEVICES=0",
        "transformer_dk512_transformer_s1 CUDA_VISIBLE_DEVICES=2",
    ]


def test_reproduce_queues_every_run_once_longest_first_over_the_gpus(tmp_path):
    """reproduce.sh: one queue of the length / grid / ablation runs (3 seeds, length 2), each on one GPU."""
    proc = _dry_run("recipes/multi30k_en_de/reproduce.sh", RUNS_ROOT=str(tmp_path), SWEEP_GPUS="0 1 2 3", PARALLEL="1")
    lines = proc.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert len(names) == len(set(names)) == 12 + 3 * (1 + 4 * 3) + 3 * 8
    assert names[0] == "transformer_dk512_transformer_u7200_s1"  # in queue order with one at a time
    assert {"collab_dk64_ws600_s3", "concat_dk512_s2", "collab_dk128_cross_attention_only_s3"} <= set(names)
    per_gpu = [sum(line.endswith(f"={g}") for line in lines) for g in range(4)]
    assert max(per_gpu) - min(per_gpu) <= 1
    assert _dry_run("recipes/multi30k_en_de/reproduce.sh", "grid", "seeds", check=False).returncode == 2


@pytest.mark.slow
def test_reparametrize_recipe_goes_to_tiny_key_dims_error_targets_and_uniform_attention(copy_data, tmp_path):
    """lib/reparametrize.sh: D_k down to 4 (one per head), per-layer error targets, uniform-attention controls;
    every variant scored with its D_k, tag and source in bleu.json."""
    raw, bin_dir = copy_data
    env = _tiny_recipe_env(raw, bin_dir, 20)
    source = tmp_path / "transformer"
    _bash("recipes/multi30k_en_de/train.sh", {**env, "HEADS": "transformer", "SAVE_DIR": str(source)})
    _bash("recipes/multi30k_en_de/evaluate.sh", {**env, "SAVE_DIR": str(source)})
    out = tmp_path / "reparam"
    proc = _bash(
        "recipes/multi30k_en_de/reparametrize.sh",
        {**env, "SOURCE": str(source), "OUT_DIR": str(out), "KEY_DIMS": "4", "FINETUNE_DIMS": "",
         "MAX_ERRORS": "0.5", "UNIFORM": "all"},
    )  # fmt: skip
    scored = {p.parent.name: json.load(open(p)) for p in out.glob("*/bleu.json")}
    assert set(scored) == {"reparam_dk4", "reparam_err0.5", "uniform_all"}
    assert scored["reparam_dk4"]["key_dim"] == 4 and scored["reparam_dk4"]["tag"] == "_reparam"
    layers = json.load(open(out / "reparam_err0.5" / "reparametrize.json"))["layers"]
    assert all(layer["relative_error"] <= 0.5 for layer in layers)
    assert scored["reparam_err0.5"]["key_dim"] == round(sum(layer["key_dim"] for layer in layers) / len(layers))
    assert {r["source"] for r in scored.values()} == {"transformer"}
    assert {(r["heads"], r["key_dim"]) for n, r in scored.items() if n.startswith("uniform")} == {("transformer", 32)}
    assert proc.stderr.count("[reparam]") == 3


def test_tatoeba_sweep_trains_every_row_at_the_transformers_best_update(tmp_path):
    """The budget: the update of the converged transformer's lowest validation loss (best_update.py reads the log);
    every grid row then trains that long, the collaborative ones with the warm start inside the warm-up."""
    from collab_fairseq.cli.best_update import best_update
    from collab_fairseq.cli.best_update import main as best_update_main

    validations = [(5.1, 180), (4.2, 360), (4.0, 540), (4.0, 720), (4.3, 900)]
    log = "\n".join(f"epoch {e:03d} | valid on 'valid' subset | loss {loss} | nll_loss 1.0 | num_updates {n}"
                    for e, (loss, n) in enumerate(validations, 1))  # fmt: skip
    assert best_update(log) == 540  # the first of equal losses
    (tmp_path / "train.log").write_text(log)
    assert best_update_main([str(tmp_path / "train.log")]) == 0
    (tmp_path / "empty.log").write_text("no validation here\n")
    assert best_update_main([str(tmp_path / "empty.log")]) == 2
    plan = _dry_run("recipes/tatoeba_en_de/sweep.sh", "collab:32:1", "concat:32:1", BUDGET="9000")
    assert "update budget: 9000" in plan.stderr
    assert sorted(plan.stdout.split()[::2]) == ["collab_dk32_ws2000_s1", "concat_dk32_s1"]  # run side by side
    unset = _dry_run("recipes/tatoeba_en_de/sweep.sh", "collab:32:1")
    assert "HEADS=transformer SEED=1 PATIENCE=5" in unset.stderr
    commands = _dry_run("recipes/tatoeba_en_de/train.sh", HEADS="collab", KEY_DIM="32", MAX_UPDATE="9000", NGPU="1")
    phases = [line for line in commands.stdout.splitlines() if "fairseq_cli.train" in line]
    assert [int(_flag(p, "--max-update")) for p in phases] == [2000, 7000]
    assert all("work/tatoeba_en_de/bin" in p and _flag(p, "--warmup-updates") in ("4000", "2000") for p in phases)
