"""transformer_collab: parameter counts in closed form, attention placement, and bad input rejected before training."""

import argparse
import re

import pytest
import torch
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_NAME_REGISTRY
from fairseq.models.transformer import TransformerModel
from fairseq.modules import MultiheadAttention

import collab_fairseq  # noqa: F401  (registers the model)
from collab_fairseq.models.collab_config import collab_layers
from collab_fairseq.models.transformer_collab import COLLAB_ARCHS, TransformerCollabModel
from collab_fairseq.modules import CollaborativeMultiheadAttention
from collab_fairseq.modules.collaborative_attention import attention_parameter_count
from tests.helpers import TINY_MODEL, TRAIN_FLAGS, USER_DIR, fairseq_generate, fairseq_train, load_model, run_cli

E, H, LAYERS = 64, 4, 2


class _Task:
    """Just enough of a translation task for build_model: a joined dictionary."""

    def __init__(self):
        from fairseq.data import Dictionary

        self.source_dictionary = self.target_dictionary = Dictionary()
        for i in range(20):
            self.source_dictionary.add_symbol(f"w{i}")


def _args(**collab):
    args = argparse.Namespace(
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_embed_dim=E,
        decoder_embed_dim=E,
        encoder_ffn_embed_dim=2 * E,
        decoder_ffn_embed_dim=2 * E,
        encoder_attention_heads=H,
        decoder_attention_heads=H,
        share_all_embeddings=True,
        **collab,
    )
    ARCH_CONFIG_REGISTRY["transformer_collab_iwslt_de_en"](args)
    return args


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("mode", ["collaborative", "concatenate"])
@pytest.mark.parametrize("key_dim", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("kdim", [None, 48])
def test_attention_parameter_count_closed_form(mode, key_dim, kdim):
    layer = CollaborativeMultiheadAttention(E, H, kdim=kdim, vdim=kdim, key_dim=key_dim, mode=mode)
    assert _count(layer) == attention_parameter_count(E, H, key_dim, mode, kdim=kdim)


def test_non_divisible_key_dim_with_random_mixing_count():
    layer = CollaborativeMultiheadAttention(E, H, key_dim=10, mixing_init="xavier")
    assert _count(layer) == attention_parameter_count(E, H, 10) == E * 10 * 2 + E * H + H * 10 + 2 * (E * E + E)


@pytest.mark.parametrize("mode", ["collaborative", "concatenate"])
@pytest.mark.parametrize("key_dim", [16, 32, 64])
def test_model_parameter_count_equals_transformer_minus_attention_difference(mode, key_dim):
    task = _Task()
    torch.manual_seed(0)
    baseline = TransformerModel.build_model(_args(), task)
    model = TransformerCollabModel.build_model(_args(collab_key_dim=key_dim, collab_mode=mode), task)
    attentions = 3 * LAYERS  # encoder self, decoder self, encoder-decoder per layer
    standard = 4 * (E * E + E)
    expected = _count(baseline) + attentions * (attention_parameter_count(E, H, key_dim, mode) - standard)
    assert _count(model) == expected
    assert sum(isinstance(m, CollaborativeMultiheadAttention) for m in model.modules()) == attentions


def test_layer_key_dims_override_the_key_dim_of_single_layers():
    args = _args(collab_key_dim=16, collab_layer_key_dims="encoder_self:1=8, encoder_decoder:0=32")
    model = TransformerCollabModel.build_model(args, _Task())
    dims = {n: m.key_dim for n, m in model.named_modules() if isinstance(m, CollaborativeMultiheadAttention)}
    assert dims.pop("encoder.layers.1.self_attn") == 8
    assert dims.pop("decoder.layers.0.encoder_attn") == 32
    assert set(dims.values()) == {16}


def test_collab_attentions_choose_which_layers_change():
    model = TransformerCollabModel.build_model(_args(collab_key_dim=16, collab_attentions="decoder_self"), _Task())
    assert isinstance(model.decoder.layers[0].self_attn, CollaborativeMultiheadAttention)
    assert type(model.decoder.layers[0].encoder_attn) is MultiheadAttention
    assert type(model.encoder.layers[0].self_attn) is MultiheadAttention


def test_full_key_dim_concatenate_init_equals_standard_transformer_outputs():
    """D_k = H*d_k, concatenate mixing, weights copied layer by layer: the whole model matches fairseq's."""
    from collab_fairseq.reparam import copy_from_multihead_attention

    task = _Task()
    torch.manual_seed(0)
    baseline = TransformerModel.build_model(_args(), task).eval()
    model = TransformerCollabModel.build_model(_args(), task).eval()
    state = {k: v for k, v in baseline.state_dict().items() if ".self_attn." not in k and ".encoder_attn." not in k}
    model.load_state_dict(state, strict=False)
    for name, module in model.named_modules():
        if isinstance(module, CollaborativeMultiheadAttention):
            copy_from_multihead_attention(module, baseline.get_submodule(name))
    src = torch.randint(4, 24, (3, 7))
    src[1, :2] = task.source_dictionary.pad()  # left padding, as fairseq batches sources
    prev = torch.randint(4, 24, (3, 5))
    lengths = src.ne(task.source_dictionary.pad()).sum(1)
    out_ref, _ = baseline(src, lengths, prev)
    out, _ = model(src, lengths, prev)
    assert (out - out_ref).abs().max() <= 1e-4  # logits over 6 layers of float32 rounding


def test_every_fairseq_transformer_architecture_has_a_collab_twin_with_its_sizes():
    fairseq_archs = [a for a, m in ARCH_MODEL_NAME_REGISTRY.items() if m == "transformer"]
    assert "transformer_wmt_en_de" in fairseq_archs and set(COLLAB_ARCHS) == set(fairseq_archs)
    for arch, twin in COLLAB_ARCHS.items():
        assert ARCH_MODEL_NAME_REGISTRY[twin] == "transformer_collab"
        ours, theirs = argparse.Namespace(), argparse.Namespace()
        ARCH_CONFIG_REGISTRY[twin](ours)
        ARCH_CONFIG_REGISTRY[arch](theirs)
        assert {k: v for k, v in vars(ours).items() if not k.startswith("collab_")} == vars(theirs)
        assert ours.collab_attention_kernel == "auto" and ours.collab_key_dim is None


def test_options_are_parsed_once_per_model_and_each_layer_gets_its_own():
    args = _args(collab_key_dim=16, collab_layer_key_dims="encoder_self:1=8", collab_attentions="encoder_self")
    from collab_fairseq.models import collab_config

    collab_config._collab_layers.cache_clear()
    model = TransformerCollabModel.build_model(args, _Task())
    info = collab_config._collab_layers.cache_info()
    assert info.misses == 1 and info.hits >= 2  # build_model, then the encoder and the decoder look it up
    plan = collab_layers(args)
    assert sorted(plan) == [("encoder_self", 0), ("encoder_self", 1)]
    assert plan[("encoder_self", 1)].key_dim == 8 and plan[("encoder_self", 0)].key_dim == 16
    assert model.encoder.layers[1].self_attn.key_dim == 8


BAD_INPUTS = [
    (["--collab-key-dim", "0"], "key dimension D_k must be a positive integer"),
    (["--collab-key-dim", "-8"], "key dimension D_k must be a positive integer"),
    (["--collab-key-dim", "10", "--collab-mode", "concatenate"], "D_k=10 cannot be split into 4 heads"),
    (["--collab-key-dim", "10"], "use a multiple of 4, or --collab-mixing-init normal/xavier"),
    (["--collab-attentions", "encoder_self,cross"], "unknown attention(s) cross"),
    (["--collab-mixing-init", "zeros"], "invalid choice: 'zeros'"),
    (["--collab-mode", "grouped"], "invalid choice: 'grouped'"),
    (["--collab-attention-kernel", "cudnn"], "invalid choice: 'cudnn'"),
    (["--collab-mixing-lr-scale", "-0.5"], "mixing learning-rate scale must be >= 0"),
    (["--collab-layer-key-dims", "encoder_self:9=16"], "encoder_self:9 does not exist (2 layers, 0-based)"),
    (["--collab-layer-key-dims", "cross:0=16"], "cannot read 'cross:0=16'"),
    (["--collab-layer-key-dims", "encoder_self:0=10"], "encoder_self attention (layer 0): D_k=10 cannot be split"),
    (["--collab-layer-key-dims", "encoder_self:0=64,encoder_self:0=16"], "sets encoder_self:0 twice (64 and 16)"),
    (
        ["--collab-attentions", "decoder_self", "--collab-layer-key-dims", "encoder_self:0=8"],
        "encoder_self is not in --collab-attentions",
    ),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS)
def test_bad_options_fail_before_training(copy_data, tmp_path, capsys, flags, message):
    """Refused while fairseq parses the command line, as argparse refuses its own errors: exit status 2, one line."""
    _, bin_dir = copy_data
    with pytest.raises(SystemExit) as failure:
        fairseq_train(
            bin_dir,
            "--user-dir",
            USER_DIR,
            "--arch",
            "transformer_collab",
            "--save-dir",
            tmp_path,
            *TINY_MODEL,
            *TRAIN_FLAGS,
            "--max-update",
            "2",
            *flags,
        )
    assert failure.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.pt"))


def test_a_bad_option_on_the_command_line_gives_one_line_and_no_traceback(copy_data, tmp_path):
    _, bin_dir = copy_data
    heads = "--encoder-attention-heads 8 --decoder-attention-heads 8".split()
    proc = run_cli("train", bin_dir, "--user-dir", USER_DIR, "--arch", "transformer_collab", "--collab-key-dim", "100",
                   *heads, "--save-dir", tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "error: encoder_self attention (layer 0): D_k=100 cannot be split into 8 heads" in proc.stdout
    assert "Traceback" not in proc.stdout and not list(tmp_path.iterdir())


def test_the_start_up_log_shows_per_layer_key_dims(copy_data, tmp_path):
    _, bin_dir = copy_data
    log = fairseq_train(bin_dir, "--user-dir", USER_DIR, "--arch", "transformer_collab", "--save-dir", tmp_path,
                        *TINY_MODEL, *TRAIN_FLAGS, "--max-update", "1", "--collab-key-dim", "16",
                        "--collab-layer-key-dims", "encoder_self:1=8")  # fmt: skip
    assert "collaborative attention: mode=collaborative D_k=16 (per layer: encoder_self:1=8) attentions=" in log


def test_a_torchscript_trace_of_a_trained_model_computes_what_the_model_does(copy_data, collab_run, tmp_path):
    """The export route: torch.jit.trace, saved and loaded as TorchScript, on a trained model (nonzero biases and
    content bias: a freshly initialised layer would hide a bias placed wrongly), on batches other than the traced one.
    """
    _, bin_dir = copy_data
    model = load_model(collab_run / "checkpoint_last.pt", bin_dir)
    assert model.encoder.layers[0].self_attn.v_proj.bias.abs().max() > 1e-3
    assert model.encoder.layers[0].self_attn.content_bias.weight.abs().max() > 1e-3

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, src_tokens, src_lengths, prev_output_tokens):
            return self.model(src_tokens, src_lengths, prev_output_tokens)[0]

    def batch(seed, padding):
        generator = torch.Generator().manual_seed(seed)
        src = torch.randint(4, 40, (3, 9), generator=generator)
        src[1, :padding] = model.encoder.padding_idx  # fairseq pads sources on the left
        return src, (src != model.encoder.padding_idx).sum(1), torch.randint(4, 40, (3, 7), generator=generator)

    wrapped = Logits(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, batch(0, 2), check_trace=False)
        torch.jit.save(traced, str(tmp_path / "model.pt"))
        loaded = torch.jit.load(str(tmp_path / "model.pt"))
        for seed, padding in [(0, 2), (1, 4), (2, 0)]:
            inputs = batch(seed, padding)
            assert (loaded(*inputs) - wrapped(*inputs)).abs().max() <= 1e-5


def test_checkpoint_with_other_key_dim_is_refused_with_the_fix(copy_data, collab_run, tmp_path):
    _, bin_dir = copy_data
    common = ["--user-dir", USER_DIR, "--arch", "transformer_collab", *TINY_MODEL, *TRAIN_FLAGS]
    expected = "has D_k=16 (collaborative heads) but the model was built with D_k=8"
    with pytest.raises(Exception) as failure:  # fairseq's trainer re-raises what the model said as an Exception
        fairseq_train(
            bin_dir,
            *common,
            "--save-dir",
            tmp_path,
            "--collab-key-dim",
            "8",
            "--max-update",
            "4",
            "--restore-file",
            collab_run / "checkpoint_last.pt",
        )
    assert expected in str(failure.value.__context__ or failure.value)
    with pytest.raises(ValueError, match=re.escape(expected)):
        fairseq_generate(
            bin_dir,
            "--user-dir",
            USER_DIR,
            "--path",
            collab_run / "checkpoint_last.pt",
            "--model-overrides",
            "{'collab_key_dim': 8}",
        )


@pytest.mark.parametrize(
    "kind,padded,mode",
    [("collab", p, m) for p in (True, False) for m in ("eval", "train")]
    + [("transformer", True, "train"), ("transformer", False, "eval")],
)
def test_encoder_and_decoder_compute_fairseqs_forward_without_reading_padding(
    copy_data, collab_run, transformer_checkpoint, padded, mode, kind
):
    """fairseq's encoder reads ``encoder_padding_mask.any()`` on the host before every layer, its decoder
    ``prev_output_tokens.eq(pad).any()`` once (each a sync on the GPU); transformer_collab's, and fairseq's transformer
    after make_sync_free, compute the same outputs and gradients without reading anything."""
    from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
    from host_reads import HostReads

    from collab_fairseq.models.sync_free import has_sync_free_forward, make_sync_free

    _, bin_dir = copy_data
    checkpoint = collab_run / "checkpoint_last.pt" if kind == "collab" else transformer_checkpoint
    model = load_model(checkpoint, bin_dir).train(mode == "train")  # tiny: dropout 0
    assert has_sync_free_forward(model) is (kind == "collab")
    assert make_sync_free(model) and has_sync_free_forward(model)
    pad = model.encoder.padding_idx
    src_tokens, prev_output_tokens = torch.randint(4, 40, (6, 9)), torch.randint(4, 40, (6, 7))
    if padded:
        src_tokens[:3, :4] = pad  # left-padded, as fairseq batches sources
        prev_output_tokens[2:, 5:] = pad  # right-padded targets
    src_lengths = src_tokens.ne(pad).sum(1)

    def forward(encode, decode):
        encoder_out = encode(model.encoder, src_tokens, src_lengths)
        return encoder_out, decode(model.decoder, prev_output_tokens, encoder_out)

    ours_reads, their_reads = HostReads(), HostReads()
    with ours_reads:
        ours_reads.counting = True
        ours = forward(lambda _, *a: model.encoder.forward_scriptable(*a),
                       lambda _, *a: model.decoder.extract_features_scriptable(*a))  # fmt: skip
    with their_reads:
        their_reads.counting = True
        theirs = forward(TransformerEncoderBase.forward_scriptable, TransformerDecoderBase.extract_features_scriptable)
    assert [call for call in ours_reads.calls if "sinusoidal_positional_embedding" not in call[2]] == []
    their_sites = [where.split(":")[0] for _, _, where, _ in their_reads.calls]
    assert their_sites.count("fairseq/models/transformer/transformer_encoder.py") > 2  # 2 layers
    assert their_sites.count("fairseq/models/transformer/transformer_decoder.py") == 1
    for key in ("encoder_out", "encoder_padding_mask", "encoder_embedding", "src_lengths"):
        assert torch.equal(ours[0][key][0], theirs[0][key][0]), key
    assert torch.equal(ours[1][0], theirs[1][0]) and torch.equal(ours[1][1]["attn"][0], theirs[1][1]["attn"][0])
    if mode == "train":
        grads = [torch.autograd.grad(features.square().sum(), model.parameters(), allow_unused=True)
                 for _, (features, _) in (ours, theirs)]  # fmt: skip
        assert all(torch.equal(a, b) for a, b in zip(*grads) if a is not None)
