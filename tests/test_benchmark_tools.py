"""The kernel issue's bookkeeping tools: the loss-scale reader, words/s over interleaved repeats, the summary, the
layer benchmark's agreement check, the beam-search benchmark's timed second pass, the host-read counter."""

import collections
import json

import attention_layer
import beam_search
import fp16_loss_scale
import host_reads
import performance_summary
import pytest
import torch
import train_step_losses
import train_throughput

from collab_fairseq.modules import CollaborativeMultiheadAttention
from tests.helpers import TINY_MODEL, USER_DIR

# the lines fairseq-train writes that the reader needs (arguments, overflow notes, train_inner, valid)
LOG = """Namespace(..., fp16_init_scale=128, fp16_scale_window=None, min_loss_scale=0.0001, threshold_loss_scale=None)
2026-11-27 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 64.0
2026-11-27 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 32.0
epoch 001:    100 / 27 loss=9.1, nll_loss=8.7, ppl=400, wps=1000, loss_scale=32, num_updates=100
epoch 004 | valid on 'valid' subset | loss 5.60 | nll_loss 4.2 | best_loss 5.605
epoch 008 | valid on 'valid' subset | loss 5.70 | nll_loss 4.3 | best_loss 5.605
"""


def test_loss_scale_reader_counts_overflows_and_ignores_min_loss_scale(tmp_path):
    (tmp_path / "phase1.log").write_text(LOG)
    second_phase = [line for line in LOG.splitlines() if "overflow" not in line]
    second_phase = "\n".join(second_phase).replace("fp16_init_scale=128", "fp16_init_scale=16")
    (tmp_path / "phase2.log").write_text(second_phase.replace("loss_scale=32", "loss_scale=16"))
    run = fp16_loss_scale.read_run([str(tmp_path / "phase1.log"), str(tmp_path / "phase2.log")])
    first, second = run["phases"]
    assert first["overflows"] == 2 and first["scales_after_overflow"] == [64.0, 32.0] and first["min_scale"] == 32
    assert second["init_scale"] == 16 and second["overflows"] == 0 and second["min_scale"] == 16  # not 0.0001
    assert run["overflows"] == 2 and run["min_scale"] == 16 and run["best_valid_loss"] == 5.605
    out = tmp_path / "scale.json"
    assert fp16_loss_scale.main([f"ws:{tmp_path}/phase1.log,{tmp_path}/phase2.log", "--out", str(out)]) == 0
    assert json.load(open(out))["ws"]["min_scale"] == 16
    assert fp16_loss_scale.main(["no_colon"]) == 2 and fp16_loss_scale.main([f"x:{tmp_path}/missing.log"]) == 2


def test_interleaved_repeats_compare_each_run_with_the_baseline_of_its_repeat():
    run = lambda wps, peak: {"wps_median": wps, "peak_gpu_bytes": peak, "params": 1}  # noqa: E731
    configs = [("transformer", "--arch a"), ("collab", "--arch b")]
    runs = {
        "transformer": [run(100, 10), run(200, 10), run(150, 10)],
        "collab": [run(110, 8), run(180, 9), run(150, 8)],
    }
    base, collab = train_throughput.summarize(configs, runs)
    assert base["ratio"] == 1.0 and base["wps_median"] == 150
    assert collab["ratios"] == [1.1, 0.9, 1.0] and collab["ratio"] == 1.0  # median of per-repeat ratios
    assert collab["wps_median"] == 150 and collab["memory_ratio"] == 0.9  # largest peak over the runs


def test_summary_has_the_issue_keys(tmp_path):
    train = {"rows": [{"name": "transformer_wmt_en_de", "ratio": 1.0, "memory_ratio": 1.0}]}
    train["rows"] += [{"name": f"collab_dk{d}", "ratio": r, "memory_ratio": 0.87} for d, r in [(512, 0.9), (128, 1.2)]]
    beam = {
        "rows": [
            {"config": c, "length": n, "ratio": r} for c, r in [("t", 1.0), ("collab_dk128", 2.0)] for n in (30, 200)
        ]
    }
    layer = {"dtype": "bfloat16", "rows": [{"layer": "ours (folded)", "shape": "8x1024", "key_dim": 64, "ratio": 1.1,
                                            "flop_ratio": 1.3, "memory_ratio": 0.6},
                                           {"layer": "ours (bmm)", "shape": "8x1024", "key_dim": 64, "ratio": 0.5,
                                            "flop_ratio": 1.3, "memory_ratio": 5.0}]}  # fmt: skip
    scale = {"transformer_s1": {"min_scale": 16.0}, "collab_dk128_ws_s1": {"min_scale": 8.0}}
    paths = {}
    for name, value in dict(train=train, beam=beam, layer=layer, scale=scale).items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(value))
    out = tmp_path / "summary.json"
    argv = ["--gpu", "H100", "--commit", "abc", "--train", str(paths["train"]), "--beam", str(paths["beam"])]
    argv += ["--layer", str(paths["layer"]), "--loss-scale", str(paths["scale"]), "--out", str(out)]
    assert performance_summary.main(argv) == 0
    result = json.load(open(out))
    assert result["train_wps_ratio"]["dk128"] == 1.2 and result["train_wps_ratio"]["dk512"] == 0.9
    assert abs(result["train_wps_ratio"]["warm_start_recipe"] - 1 / (1 / 3 + 2 / 3 / 1.2)) < 1e-12
    assert result["peak_memory_ratio"] == {"dk128": 0.87} and result["beam_sentences_ratio"] == {"30": 2.0, "200": 2.0}
    assert result["layer_speed_ratio"] == {} and result["layer_kernel"] == {}  # auto takes fused at 1024, not here
    argv[argv.index("--out") : argv.index("--out")] = ["--layer-kernel", "folded"]
    assert performance_summary.main(argv) == 0
    result = json.load(open(out))
    assert result["layer_speed_ratio"] == {"dk64_1024": 1.1} and result["layer_memory_ratio"] == {"dk64_1024": 0.6}
    assert result["layer_kernel"] == {"dk64_1024": "folded"}
    assert result["loss_scale_min"] == {"transformer": 16.0, "collab_dk128": 8.0}


def test_summary_names_the_commit_of_each_figure_what_went_stale_and_notes(tmp_path):
    train = {"rows": [{"name": "collab_dk128", "ratio": 0.96, "memory_ratio": 0.87}]}
    layer = {"dtype": "bfloat16", "rows": [{"layer": "ours (fused)", "shape": "8x1024", "key_dim": 64, "ratio": 1.1,
                                            "flop_ratio": 1.3, "memory_ratio": 0.5}]}  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "layer.json").write_text(json.dumps(layer))
    out = tmp_path / "summary.json"
    argv = ["--gpu", "H100", "--commit", "new", "--train", str(tmp_path / "train.json")]
    argv += ["--layer", str(tmp_path / "layer.json"), "--source-commit", "layer=old", "--out", str(out)]
    assert performance_summary.main([*argv, "--stale", "layer_speed_ratio=baseline changed since"]) == 0
    result = json.load(open(out))
    assert result["commit"] == "new" and result["layer_speed_ratio"] == {"dk64_1024": 1.1}
    assert result["commits"]["train_wps_ratio"] == "new" and result["commits"]["peak_memory_ratio"] == "new"
    assert result["commits"]["layer_speed_ratio"] == "old" and result["commits"]["layer_memory_ratio"] == "old"
    assert result["stale"] == {"layer_speed_ratio": "baseline changed since"} and "notes" not in result
    assert performance_summary.main([*argv, "--note", "train_wps_ratio=0.94x on another machine"]) == 0
    assert json.load(open(out))["notes"] == {"train_wps_ratio": "0.94x on another machine"}
    out.unlink()
    assert performance_summary.main([*argv, "--stale", "beam_sentences_ratio=no beam file given"]) == 2
    assert performance_summary.main([*argv, "--note", "beam_sentences_ratio=no beam file given"]) == 2
    assert performance_summary.main([*argv, "--source-commit", "trian=x"]) == 2 and not out.exists()


def test_layer_check_keeps_fp16_gradients_of_a_long_layer_above_underflow():
    """attention_layer.py checks each kernel against the float32 naive formulation under fp16 autocast. With a mean
    over all outputs as the objective, the fp16 gradients at 4 x 256 tokens (already 0.5M outputs; the benchmark
    has 16M) were partly flushed to zero: relative errors up to 0.4 for every kernel, bmm included (the H100 run of
    90e9683 refused every kernel in fp16). The objective is a sum, and bmm agrees within the fp16 tolerance."""
    torch.manual_seed(0)
    x = torch.randn(256, 4, attention_layer.EMBED)
    padding = torch.zeros(4, 256, dtype=torch.bool)
    padding[0, -3:] = True
    layer = CollaborativeMultiheadAttention(
        attention_layer.EMBED, attention_layer.HEADS, self_attention=True, key_dim=128
    )
    with torch.no_grad():
        layer.content_bias.weight.normal_(0, 0.02)
    err, ok = attention_layer.agree(layer.train(), "bmm", x, padding, torch.float16, tol=1e-2)
    assert ok and err < 5e-3


def test_beam_search_times_a_second_pass_of_the_same_process(copy_data, collab_run, monkeypatch):
    """fairseq-generate runs twice in one process: the warm rate is the second "Translated" line, the cold the
    first, each of the whole test set; no data-loader worker of the first pass is alive when the second starts
    (its shutdown stalled the timed pass ~5 s)."""
    _, bin_dir = copy_data
    outputs = []
    run = beam_search.run
    monkeypatch.setattr(beam_search, "run", lambda cmd: outputs.append(run(cmd)) or outputs[-1])
    speeds = beam_search.translate(str(bin_dir), str(collab_run / "checkpoint_last.pt"), 7, 64, 4, "test", ["--cpu"])
    lines = beam_search.SPEED.findall(outputs[0])
    assert beam_search.WORKERS_LEFT.findall(outputs[0]) == ["0"]
    assert len(lines) == 2 and lines[0][:2] == lines[1][:2]  # the same sentences and tokens, translated twice
    for (sentences, tokens, sentences_per_s, tokens_per_s), key in zip(lines, ("cold", "warm")):
        assert speeds[key] == (float(sentences_per_s), float(tokens_per_s))
        assert int(tokens) == int(sentences) * 8  # forced: 7 tokens + end of sentence
    assert speeds["cache_bytes"] is None  # fairseq's search


def test_beam_search_passes_generate_flags_and_keeps_the_cache_size(copy_data, collab_run):
    """A configuration's |GENERATE_FLAGS reach fairseq-generate: the package's search reports its cache (64 rows =
    16 sentences x beam 4, 8 positions; per layer and row: 16 + 4 key entries and 64 values, fp32, 2 layers)."""
    _, bin_dir = copy_data
    speeds = beam_search.translate(str(bin_dir), str(collab_run / "checkpoint_last.pt"), 7, 16, 4, "test", ["--cpu"],
                                   ["--task", "translation_fast", "--generator", "static"])  # fmt: skip
    rows, positions = 16 * 4, 8
    assert speeds["cache_bytes"] == {"rows": rows, "positions": positions, "keys": 2 * rows * positions * 20 * 4,
                                     "values": 2 * rows * positions * 64 * 4}  # fmt: skip


def test_summary_gains_the_package_beam_search_ratios_and_keeps_what_it_merges(tmp_path):
    rates = {"transformer_fairseq": 1.0, "transformer_static": 2.0, "collab_dk128_fairseq": 0.8,
             "collab_dk128_static": 2.4}  # fmt: skip
    cache = {"transformer_static": {"keys": 100}, "collab_dk128_static": {"keys": 27}}
    rows = [{"config": c, "length": n, "sentences_per_s": r * n, "cache_bytes": cache.get(c)}
            for c, r in rates.items() for n in (30, 200)]  # fmt: skip
    (tmp_path / "fast.json").write_text(json.dumps({"rows": rows}))
    old = {"gpu": "H100", "commit": "old", "beam_sentences_ratio": {"30": 1.2},
           "commits": {"beam_sentences_ratio": "old"}, "notes": {"beam_sentences_ratio": "kept"}}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(old))
    out = tmp_path / "summary.json"
    argv = ["--gpu", "H100", "--commit", "new", "--fast-beam", str(tmp_path / "fast.json"), "--out", str(out)]
    assert performance_summary.main([*argv, "--merge", str(tmp_path / "old.json")]) == 0
    result = json.load(open(out))
    assert result["fast_beam_ratio"] == pytest.approx({"vs_stock_30": 3.0, "vs_stock_200": 3.0,
                                                       "collab_vs_transformer_30": 1.2,
                                                       "collab_vs_transformer_200": 1.2})  # fmt: skip
    assert result["fast_beam_cache_key_ratio"] == 0.27 and result["fast_beam_commit"] == "new"
    assert result["beam_sentences_ratio"] == {"30": 1.2} and result["commits"]["beam_sentences_ratio"] == "old"
    assert result["commits"]["fast_beam_ratio"] == "new" and result["notes"] == {"beam_sentences_ratio": "kept"}
    (tmp_path / "fast.json").write_text(json.dumps({"rows": rows[2:]}))
    assert performance_summary.main(argv) == 2  # a configuration missing: refused


def test_summary_gains_the_fast_training_step_ratios(tmp_path):
    """Per-repeat ratios (each run against the baseline's run of the same repeat), their median; memory: reserved."""
    wps = {"transformer_stock": [100, 110, 90], "transformer_fast": [160, 150, 170],
           "collab_dk128_fast": [160, 165, 170], "collab_dk64_fast": [170, 180, 160]}  # fmt: skip
    reserved = {"transformer_stock": 10, "transformer_fast": 11}
    rows = [{"name": n, "runs": [{"wps_median": w, "peak_gpu_reserved_bytes": reserved.get(n)} for w in ws]}
            for n, ws in wps.items()]  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps({"rows": rows}))
    out = tmp_path / "summary.json"
    argv = ["--gpu", "H100", "--commit", "c", "--fast-train", str(tmp_path / "train.json"), "--out", str(out)]
    assert performance_summary.main(argv) == 0
    result = json.load(open(out))
    assert result["fast_train_wps_ratio"] == pytest.approx(
        {"dk128_vs_stock": 1.6, "dk64_vs_stock": 1.7, "dk128_vs_fast_transformer": 1.0,
         "dk64_vs_fast_transformer": 170 / 160})  # fmt: skip
    assert result["fast_train_memory_ratio"] == {"transformer": 1.1} and result["fast_train_commit"] == "c"
    (tmp_path / "train.json").write_text(json.dumps({"rows": rows[:3]}))
    assert performance_summary.main(argv) == 2  # collab_dk64_fast missing: refused


def test_host_reads_finds_fairseqs_padding_checks_and_none_in_transformer_collab(copy_data):
    """fairseq's encoder reads ``encoder_padding_mask.any()`` once per layer of a micro-batch, its decoder once;
    transformer_collab's forward reads neither (what is left: the positional embedding's CPU shape checks)."""
    _, bin_dir = copy_data
    tiny = " ".join(TINY_MODEL)
    reads = {}
    for name, arch in (("transformer", "transformer_iwslt_de_en"), ("collab", "transformer_collab_iwslt_de_en "
                                                                              "--collab-key-dim 16")):  # fmt: skip
        calls, timing, profiled = host_reads.record(str(bin_dir), f"--arch {arch} {tiny}", 3, USER_DIR, 2)
        summary = host_reads.summarize(calls, 1)
        assert summary["updates_counted"] == 2 and summary["cuda_reads_per_update"] == 0  # a CPU run
        device_s, phases, idle = profiled
        assert len(timing) == 3 and device_s is None and idle == {}  # no device time on the CPU; the host's phases:
        assert {"forward", "backward", "clip-grads", "optimizer"} <= set(phases) and all(phases.values())
        step = host_reads.summarize_time(timing, 1, profiled)
        assert 0 < step["micro_batch_host_ms_per_update"] < step["wall_ms_per_update"]
        reads[name] = collections.Counter()
        for site in summary["sites"]:
            if site["phase"] == "micro-batch":
                reads[name][site["site"].split(" at ")[1].split(":")[0]] += site["per_update"]
    assert reads["transformer"]["fairseq/models/transformer/transformer_encoder.py"] == 2 + 1  # 2 layers + 1 CPU
    assert reads["transformer"]["fairseq/models/transformer/transformer_decoder.py"] == 1
    assert set(reads["collab"]) == {"fairseq/modules/sinusoidal_positional_embedding.py"}


def test_train_step_losses_compares_each_updates_loss_with_the_first_runs(copy_data):
    """On the CPU the graphed step runs padded eager micro-batches: the same losses as --train-step bucketed, update
    by update (losses that change from update to update: each update's own)."""
    _, bin_dir = copy_data
    common = (f"--arch transformer_iwslt_de_en {' '.join(TINY_MODEL)} --optimizer adam --lr 3e-3 --max-tokens 600 "
              "--criterion label_smoothed_cross_entropy --label-smoothing 0.1 --seed 1 --num-workers 0 "
              "--disable-validation --no-save --log-format simple --log-interval 1 --no-progress-bar "
              "--task translation_fast --required-batch-size-multiple 8")  # fmt: skip
    configs = ["--config", "eager:--train-step bucketed", "--config", "graphs:--train-step graphs"]
    rows = train_step_losses.main([str(bin_dir), "--updates", "6", "--common", common, *configs])
    eager, graphs = rows
    assert len(eager["losses"]) == 6 and len(set(eager["losses"])) == 6 and eager["losses"][-1] < eager["losses"][0]
    assert graphs["losses"] == eager["losses"] and graphs["max_abs_diff"] == 0 == eager["max_abs_diff"]
    assert "training step: padded eager micro-batches (CUDA graphs need a GPU)" in graphs["training_step"]
    assert eager["training_step"] == ["training step: padded eager micro-batches (--train-step bucketed)"]
    assert graphs["recorded_shapes"] == 0 == eager["recorded_shapes"]  # on the CPU nothing is recorded


def test_profiled_device_time_is_the_union_of_kernels_not_annotations():
    """fairseq's record_function ranges also appear on the device's timeline, spanning the kernels they enclose:
    counted as busy time they doubled it (a busy fraction above 1 on an H100)."""
    from types import SimpleNamespace

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(name, device, start, end, annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=start, end=end))  # fmt: skip

    events = [event("forward", cpu, 0, 400), event("forward", cuda, 100, 900, annotation=True),
              event("gemm", cuda, 100, 300), event("softmax", cuda, 250, 500), event("copy", cuda, 700, 900),
              event("optimizer", cpu, 500, 600), event("forward", cpu, 1000, 1200),
              event("aten::mm", cpu, 0, 50)]  # fmt: skip
    device_s, phases, idle = host_reads.profiled_times(events, updates=2, cuda=True)
    assert device_s == pytest.approx((400 + 200) / 1e6 / 2)  # 100-500 and 700-900; the annotation left out
    assert phases == pytest.approx({"forward": 600 / 1e6 / 2, "optimizer": 100 / 1e6 / 2})
    assert idle == {}  # no update ranges: no window to charge idle time in
    assert host_reads.profiled_times(events[:1], updates=1, cuda=False)[0] is None


def test_device_idle_time_goes_to_what_the_host_was_doing():
    """Gaps on the device's timeline inside the profiled updates, each piece charged to the innermost host range."""
    update = host_reads.UPDATE
    busy = [[100, 300], [500, 600], [900, 1000]]
    ranges = [(0, 700, update), (250, 450, "clip-grads"), (450, 550, "optimizer"), (800, 1100, update)]
    idle = host_reads.idle_by_host_phase(busy, ranges)
    # 0-100: rest of the update; 300-450: clip-grads; 450-500: optimizer; 600-700: rest; 700-800: between updates;
    # 800-900: rest; 1000-1100: rest (the window ends with the last update)
    assert idle == {"rest of the update": 100 + 100 + 100 + 100, "clip-grads": 150, "optimizer": 50,
                    "between updates": 100}  # fmt: skip
    assert sum(idle.values()) == 1100 - sum(end - start for start, end in busy)
