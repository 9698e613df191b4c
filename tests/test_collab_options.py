"""The training options of collaborative heads: mixing learning-rate scale / freezing, no content bias; the shipped
hydra configs against the options' dataclass."""

from pathlib import Path

import pytest
import torch
import yaml

from collab_fairseq.models.collab_config import COLLAB_OPTIONS
from collab_fairseq.modules import CollaborativeMultiheadAttention
from collab_fairseq.modules.collaborative_attention import attention_parameter_count, init_mixing_
from tests.helpers import USER_DIR

EMBED, HEADS, KEY_DIM = 32, 4, 16


def _layer(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CollaborativeMultiheadAttention(EMBED, HEADS, self_attention=True, key_dim=KEY_DIM, **kwargs)


def _adam_step(layer, lr=1e-3):
    """One Adam step on a fixed loss, over the trainable parameters only (as fairseq builds its optimizer)."""
    torch.manual_seed(5)
    x = torch.randn(6, 3, EMBED)
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=lr)
    before = layer.mixing_matrix().detach().clone()
    out, _ = layer(x, x, x, need_weights=False)
    out.pow(2).sum().backward()
    opt.step()
    return layer.mixing_matrix().detach() - before


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 3.0])
def test_mixing_matrix_starts_at_its_init_whatever_the_scale(scale):
    layer = _layer(mixing_lr_scale=scale)
    want = init_mixing_(torch.empty(HEADS, KEY_DIM), "concatenate")
    assert torch.equal(layer.mixing_matrix().detach(), want)
    assert layer.mixing.shape == (HEADS, KEY_DIM)


@pytest.mark.parametrize("scale", [0.1, 0.5])
def test_mixing_learning_rate_scale_scales_the_adam_step(scale):
    lr = 1e-3
    step_full = _adam_step(_layer(mixing_lr_scale=1.0), lr)
    step_scaled = _adam_step(_layer(mixing_lr_scale=scale), lr)
    # Adam's first step is lr * sign(grad) per entry: the mixing moves scale * lr instead of lr
    moved = step_full.abs() > lr / 2
    assert moved.sum() > 0
    assert torch.allclose(step_full[moved].abs(), torch.full_like(step_full[moved], lr), rtol=1e-3)
    assert torch.allclose(step_scaled[moved], scale * step_full[moved], rtol=1e-3)


def test_zero_scale_freezes_the_mixing_under_an_optimizer_step():
    layer = _layer(mixing_lr_scale=0.0)
    assert not layer.mixing.requires_grad
    q_before = layer.q_proj.weight.detach().clone()
    moved = _adam_step(layer)
    assert torch.equal(moved, torch.zeros_like(moved))
    assert not torch.equal(layer.q_proj.weight.detach(), q_before)  # the rest still learns


def test_set_mixing_round_trips_through_the_scale():
    layer = _layer(mixing_lr_scale=0.25)
    want = torch.randn(HEADS, KEY_DIM)
    layer.set_mixing_(want)
    assert torch.allclose(layer.mixing_matrix().detach(), want)
    assert torch.allclose(layer.mixing.detach(), want / 0.25)


def test_no_content_bias_drops_the_parameter_and_equals_a_zero_bias():
    with_bias, without = _layer(seed=1), _layer(seed=1, content_bias=False)
    assert without.content_bias is None
    assert sum(p.numel() for p in without.parameters()) == attention_parameter_count(
        EMBED, HEADS, KEY_DIM, content_bias=False
    )
    assert sum(p.numel() for p in with_bias.parameters()) - sum(p.numel() for p in without.parameters()) == (
        EMBED * HEADS
    )
    without.load_state_dict({k: v for k, v in with_bias.state_dict().items() if "content_bias" not in k})
    x = torch.randn(5, 2, EMBED)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    for need_weights in (True, False):  # content bias is zero-initialised: same function
        out_a, _ = with_bias(x, x, x, key_padding_mask=padding, need_weights=need_weights)
        out_b, _ = without(x, x, x, key_padding_mask=padding, need_weights=need_weights)
        assert torch.allclose(out_a, out_b, atol=1e-6)


@pytest.mark.parametrize("scale", [-0.1, float("nan")])
def test_bad_mixing_scale_is_rejected(scale):
    with pytest.raises(ValueError, match="mixing learning-rate scale must be >= 0"):
        _layer(mixing_lr_scale=scale)


@pytest.mark.parametrize("config", sorted((Path(USER_DIR) / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_hydra_configs_list_every_collab_option_at_the_dataclass_default(config):
    """So that a fairseq-hydra-train user overrides any option without '+' and gets what the command line gives;
    collab_key_dim, the one each config chooses, excepted."""
    model = yaml.safe_load(config.read_text())["model"]
    listed = {k: v for k, v in model.items() if k.startswith("collab_")}
    assert set(listed) == set(COLLAB_OPTIONS)
    defaults = {k: ("" if v is None else v) for k, v in COLLAB_OPTIONS.items() if k != "collab_key_dim"}
    assert {k: ("" if v is None else v) for k, v in listed.items() if k != "collab_key_dim"} == defaults
