"""collab_fairseq.cli.uniform_attention: the copy's chosen attentions weigh every allowed key equally."""

import pytest
import torch

from collab_fairseq.cli import uniform_attention
from tests.helpers import load_model


def _attention_weights(model, src_tokens):
    """(encoder self-attention, decoder cross-attention) weights of layer 0, averaged over heads: B x T x S."""
    encoder_out = model.encoder(src_tokens, src_lengths=torch.full((src_tokens.size(0),), src_tokens.size(1)))
    enc = encoder_out["encoder_out"][0]  # S x B x C
    with torch.no_grad():
        _, self_weights = model.encoder.layers[0].self_attn(enc, enc, enc, need_weights=True)
        query = torch.randn(5, src_tokens.size(0), enc.size(-1))
        _, cross_weights = model.decoder.layers[0].encoder_attn(query, enc, enc, need_weights=True, static_kv=True)
    return self_weights, cross_weights


@pytest.mark.parametrize("which", ["transformer", "collab"])
def test_uniform_copy_attends_equally_and_only_where_asked(
    which, copy_data, transformer_checkpoint, collab_run, tmp_path
):
    _, bin_dir = copy_data
    source = transformer_checkpoint if which == "transformer" else collab_run / "checkpoint_last.pt"
    out = tmp_path / "uniform.pt"
    uniform_attention.main([str(source), str(out), "--attentions", "encoder_decoder"])
    torch.manual_seed(0)
    src = torch.randint(4, 40, (3, 9))
    original_self, original_cross = _attention_weights(load_model(source, bin_dir), src)
    torch.manual_seed(0)
    uniform_self, uniform_cross = _attention_weights(load_model(out, bin_dir), src)
    assert torch.allclose(uniform_cross, torch.full_like(uniform_cross, 1 / 9), atol=1e-6)
    assert (original_cross - 1 / 9).abs().max() > 1e-2  # the trained model's cross-attention was selective
    assert torch.equal(uniform_self, original_self)  # encoder self-attention untouched


def test_bad_input_is_refused_without_output(transformer_checkpoint, tmp_path):
    out = tmp_path / "uniform.pt"
    with pytest.raises(SystemExit, match="unknown attention"):
        uniform_attention.main([str(transformer_checkpoint), str(out), "--attentions", "cross"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        uniform_attention.main([str(tmp_path / "missing.pt"), str(out)])
    assert not out.exists()
    out.write_bytes(b"")
    with pytest.raises(SystemExit, match="--force"):
        uniform_attention.main([str(transformer_checkpoint), str(out)])
