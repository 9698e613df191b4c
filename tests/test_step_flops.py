"""benchmarks/step_flops.py and decode_step_counts.py: their counts equal the closed form for both architectures.

Per target token of a forward pass with S = T tokens on both sides, E model dims, H heads, per attention
layer: fairseq's heads 4 x 2E^2 (q, k, v, out) + 2 x 2ES (scores, values); collaborative heads
2 x 2ED_k + 2 x 2E^2 + 2E x 8 (content bias, H = 4 outputs, and the 4 zero outputs that pad the fused
projection to a multiple of 8) + 2HD_kS (every head scores over all D_k) + 2ES.
"""

import tempfile
import types

import decode_step_counts
import pytest
import step_flops
from model_steps import write_dict
from profile_training_step import op_differences

from tests.helpers import TINY_MODEL

E, H, LAYERS, D_K, SENTENCES, TOKENS = 64, 4, 2 * 3, 32, 4, 8  # TINY_MODEL: 2+2 layers -> 6 attention layers


def _count(dtype):
    args = types.SimpleNamespace(sentences=SENTENCES, tokens=TOKENS, top=100, dtype=dtype)
    with tempfile.TemporaryDirectory() as data_dir:
        write_dict(data_dir, 100)
        return {
            name: step_flops.count_config(name, flags, data_dir, args)
            for name, flags in [
                ("transformer", " ".join(["--arch transformer", *TINY_MODEL])),
                ("collab", " ".join(["--arch transformer_collab --collab-key-dim", str(D_K), *TINY_MODEL])),
            ]
        }


@pytest.fixture(scope="module")
def rows():
    return _count("float32")


def test_attention_flops_match_the_closed_form(rows):
    base, collab = rows["transformer"], rows["collab"]
    assert base["forward_attention_projection_flops_per_token"] == LAYERS * 4 * 2 * E * E
    assert base["forward_attention_score_flops_per_token"] == LAYERS * 2 * 2 * E * TOKENS
    assert collab["forward_attention_projection_flops_per_token"] == LAYERS * (
        2 * 2 * E * D_K + 2 * 2 * E * E + 2 * E * 8
    )
    assert collab["forward_attention_score_flops_per_token"] == LAYERS * (2 * H * D_K * TOKENS + 2 * E * TOKENS)


def test_a_step_is_forward_plus_about_twice_its_work_in_backward(rows):
    for row in rows.values():
        forward = row["forward_flops_per_token"] * row["target_tokens"] / 1e9
        assert (
            2.5 * forward < row["gflops_per_step"] < 3.05 * forward
        )  # backward ~2x forward (no input grads at embeddings)
        assert row["operators_per_step"] > 100


def test_decode_step_counts_read_the_cache_each_architecture_keeps():
    args = types.SimpleNamespace(sentences=2, source_tokens=5, length=[4], vocab=100, top=3)
    with tempfile.TemporaryDirectory() as data_dir:
        write_dict(data_dir, 100)
        base, collab = (
            decode_step_counts.count_config(name, " ".join([flags, *TINY_MODEL]), data_dir, args)["steps"][0]
            for name, flags in [("t", "--arch transformer"), ("c", f"--arch transformer_collab --collab-key-dim {D_K}")]
        )
    cached = 4 - 1  # positions before the counted step; 2 decoder layers, fp16
    assert base["cache_bytes_per_hypothesis"] == 2 * cached * (E + E) * 2
    assert collab["cache_bytes_per_hypothesis"] == 2 * cached * (D_K + H + E) * 2  # shared keys, bias, values
    assert 0 < collab["flops_per_hypothesis"] < base["flops_per_hypothesis"]


def test_the_profile_lines_up_each_op_with_the_baseline_largest_difference_first():
    ours = {"aten::mul": 0.9, "aten::bmm": 0.5, "backward: MulBackward0": 0.4}
    baseline = {"aten::bmm": 0.6, "aten::_flash_attention_forward": 0.3}
    assert op_differences(ours, baseline) == [
        ("aten::mul", 0.9, 0.0),
        ("backward: MulBackward0", 0.4, 0.0),
        ("aten::_flash_attention_forward", 0.0, 0.3),
        ("aten::bmm", 0.5, 0.6),
    ]


def test_float16_counts_the_casts_of_fp16_training_and_the_same_flops(rows):
    """In fp16 the softmax runs in float32 between two casts (fairseq's and ours alike), operators that fp32 does
    not dispatch; the matrix work is the same."""
    half = _count("float16")
    for name, row in rows.items():
        assert half[name]["gflops_per_step"] == pytest.approx(row["gflops_per_step"])
        casts = dict(half[name]["top_operators"]).get("_to_copy", 0) - dict(row["top_operators"]).get("_to_copy", 0)
        assert half[name]["operators_per_step"] - row["operators_per_step"] == casts > 0
