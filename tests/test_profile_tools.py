"""The profilers' timing protocol: configurations built first and timed in interleaved rounds (training steps;
decoding steps from a kept cache), and both tools end to end on the CPU."""

import json
import statistics
import subprocess
import sys

import profile_decode_step
import profile_training_step
import torch

from tests.helpers import REPO, TINY_MODEL


def test_wall_time_is_timed_in_rounds_the_configurations_take_turns_in():
    calls = []
    prepared = [(name, "", None, lambda sample, name=name: calls.append((name, sample)), [0, 1]) for name in "ab"]
    walls = profile_training_step.interleaved_wall_ms(prepared, 3, torch.device("cpu"))
    assert [name for name, _ in calls] == ["a", "a", "b", "b"] * 3  # a round: each configuration's steps in turn
    assert len(walls) == 2 and all(len(w) == 3 and min(w) > 0 for w in walls)
    rows = [{"wall_ms_rounds": [2.0, 4.0, 3.0]}, {"wall_ms_rounds": [1.0, 2.0, 6.0]}]
    assert profile_training_step.wall_ratios(rows[1], rows[0]) == [0.5, 0.5, 2.0]  # paired round by round


def test_profile_training_step_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "profile.json"
    flags = " ".join(TINY_MODEL)
    argv = ["--sentences", "2", "--tokens", "6", "--steps", "2", "--warmup", "1", "--wall-rounds", "2"]
    argv += ["--config", f"t:--arch transformer {flags}", "--config", f"c:--arch transformer_collab {flags}"]
    result = _run("profile_training_step.py", *argv, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.load(open(out))["rows"]
    assert [r["config"] for r in rows] == ["t", "c"]
    for row in rows:
        assert len(row["wall_ms_rounds"]) == 2 and row["wall_ms_per_step"] == statistics.median(row["wall_ms_rounds"])
        assert row["ms_per_step"] > 0 and row["host_aten_ms_per_step"] > 0
    assert "| c |" in result.stdout and "wall: median over 2 rounds" in result.stdout


def _run(script, *args):
    argv = [sys.executable, str(REPO / "benchmarks" / script), "--vocab", "100", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_profile_decode_step_times_every_round_from_the_same_cache(tmp_path):
    out = tmp_path / "decode.json"
    flags = " ".join(TINY_MODEL)
    result = _run(
        "profile_decode_step.py", "--sentences", "2", "--beam", "2", "--length", "5", "--length", "8", "--steps", "2",
        "--wall-rounds", "3", "--config", f"t:--arch transformer {flags}",
        "--config", f"c:--arch transformer_collab {flags}", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.load(open(out))["rows"]
    for row in rows:
        assert [s["length"] for s in row["lengths"]] == [5, 8]
        assert all(len(s["wall_ms_rounds"]) == 3 and s["ms_per_step"] > 0 for s in row["lengths"])
    assert "wall: median over 3 rounds" in result.stdout


def test_a_decoding_brought_back_continues_from_the_kept_cache():
    class Decoder:  # stands in for fairseq's: a cache that grows by one entry per step
        def __call__(self, tokens, encoder_out, incremental_state):
            cache = incremental_state.setdefault("layer", {"prev_key": tokens.new_zeros(tokens.size(0), 0)})
            cache["prev_key"] = torch.cat([cache["prev_key"], tokens[:, -1:]], 1)
            return torch.zeros(tokens.size(0), 1, 3)

        def reorder_incremental_state_scripting(self, state, order):
            state["layer"]["prev_key"] = state["layer"]["prev_key"].index_select(0, order)

    model = type("Model", (), {"decoder": Decoder(), "get_normalized_probs": lambda *a, **k: None})()
    decoding = profile_decode_step.Decoding(model, None, torch.tensor([1, 0]), 2, 2, 50, torch.device("cpu"))
    for _ in range(3):
        decoding.step()
    decoding.snapshot()
    kept_cache, kept_tokens = decoding.state["layer"]["prev_key"].clone(), decoding.tokens.clone()
    for _ in range(2):
        decoding.step()
    assert decoding.state["layer"]["prev_key"].size(1) == 5
    decoding.restore()
    assert torch.equal(decoding.state["layer"]["prev_key"], kept_cache) and torch.equal(decoding.tokens, kept_tokens)
    decoding.step()  # the copy brought back is not the kept one: the next restore starts from the same cache again
    decoding.restore()
    assert decoding.state["layer"]["prev_key"].size(1) == 3
