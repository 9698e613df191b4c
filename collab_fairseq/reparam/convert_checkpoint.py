"""Checkpoint-level re-parametrization: a fairseq ``transformer`` (or concatenated-heads
``transformer_collab``) checkpoint -> a ``transformer_collab`` checkpoint with collaborative heads.

Works on the state dict alone (no data or task needed). Attention layers are found by name:
``encoder.layers.N.self_attn`` (encoder_self), ``decoder.layers.N.self_attn`` (decoder_self),
``decoder.layers.N.encoder_attn`` (encoder_decoder).
"""

import argparse
import copy
import os
import re
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import torch

from collab_fairseq.files import check_writable, load_checkpoint_file, save_checkpoint_atomically
from collab_fairseq.models.collab_config import (
    ATTENTIONS,
    COLLAB_OPTIONS,
    attention_heads,
    collab_layers,
    format_layer_key_dims,
    parse_attentions,
)
from collab_fairseq.models.transformer_collab import COLLAB_ARCHS
from collab_fairseq.modules import CollaborativeMultiheadAttention
from collab_fairseq.needs_user_dir import TransformerCollabArgs
from collab_fairseq.reparam.cp import AttentionWeights, CollaborativeWeights, reparametrize_attention

_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.q_proj\.weight$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message names the problem and the fix."""


def load_checkpoint(path: str) -> dict:
    """Read a fairseq checkpoint with torch's safe loading (fairseq's objects are allowlisted on import)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = load_checkpoint_file(path)
    except Exception as err:  # torch raises many types for truncated / foreign files
        raise CheckpointError(
            f"cannot read {path} as a fairseq checkpoint ({type(err).__name__}: {str(err)[:200]}); "
            "it may be truncated or corrupted: copy it again, or pick checkpoint_best.pt / checkpoint_last.pt"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


def model_args(state: dict) -> argparse.Namespace:
    """The model's argparse arguments as the checkpoint stores them (cfg['model'] or, older, args)."""
    cfg = state.get("cfg")
    args = cfg.get("model") if isinstance(cfg, dict) or hasattr(cfg, "get") else None
    if args is None:
        args = state.get("args")
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError(
            "the checkpoint stores no argparse model arguments (a hydra-only model?): only fairseq's legacy "
            "transformer and transformer_collab checkpoints can be converted"
        )
    return args


def attention_layers(state_dict: Dict[str, torch.Tensor]) -> Dict[str, str]:
    """{state-dict prefix: attention kind} of every attention layer in the model."""
    kinds = {("encoder", "self_attn"): "encoder_self", ("decoder", "self_attn"): "decoder_self"}
    kinds[("decoder", "encoder_attn")] = "encoder_decoder"
    found = {}
    for key in state_dict:
        m = _LAYER.match(key)
        if m:
            found[key[: -len(".q_proj.weight")]] = kinds[(m.group(1), m.group(3))]
    return dict(sorted(found.items(), key=lambda kv: (kv[0].startswith("decoder"), int(kv[0].split(".")[2]), kv[0])))


def target_arch(args: argparse.Namespace) -> str:
    arch = getattr(args, "arch", None) or getattr(args, "_name", None)
    if arch in COLLAB_ARCHS:
        return COLLAB_ARCHS[arch]
    if arch in COLLAB_ARCHS.values():
        if str(getattr(args, "collab_mode", "")) != "concatenate":
            raise CheckpointError(
                f"the checkpoint is already a collaborative {arch} model: convert the transformer it came from, "
                "or a --collab-mode concatenate one"
            )
        return arch
    raise CheckpointError(
        f"unsupported architecture {arch!r}: only fairseq's transformer architectures ({', '.join(COLLAB_ARCHS)}) "
        "and transformer_collab* models trained with --collab-mode concatenate have per-head key/query weights"
    )


def smallest_key_dim(weights: AttentionWeights, max_error: float, n_iter: int) -> CollaborativeWeights:
    """The decomposition at the smallest D_k (a multiple of H) whose relative error is <= ``max_error``."""
    heads, lo, hi = weights.num_heads, 1, weights.head_dim
    best = reparametrize_attention(weights, heads * hi, n_iter=n_iter)
    while lo < hi:  # the error falls as D_k grows
        mid = (lo + hi) // 2
        trial = reparametrize_attention(weights, heads * mid, n_iter=n_iter)
        if trial.relative_error <= max_error:
            best, hi = trial, mid
        else:
            lo = mid + 1
    return best


def reparametrize_checkpoint(
    state: dict,
    key_dim: Optional[int],
    attentions: Optional[List[str]] = None,
    n_iter: int = 200,
    device: str = "cpu",
    mixing_lr_scale: float = 1.0,
    progress: Callable = lambda it, **kw: it,
    layer_key_dims: Optional[Dict[Tuple[str, int], int]] = None,
    max_error: Optional[float] = None,
) -> (dict, List[dict]):
    """Return (new checkpoint state, per-layer report) with the chosen attentions collaborative.

    Each layer's D_k: ``layer_key_dims[(attention, layer)]`` if given, else the smallest multiple of H
    meeting ``max_error`` if given, else ``key_dim``. Report rows: {"layer", "attention", "key_dim",
    "relative_error", "seconds"}.
    """
    if key_dim is None and max_error is None:
        raise CheckpointError("give a D_k (--key-dim) or an error target (--max-error)")
    layer_key_dims = dict(layer_key_dims or {})
    args = model_args(state)
    arch = target_arch(args)
    attentions = list(ATTENTIONS) if attentions is None else attentions
    source_collab = set(parse_attentions(getattr(args, "collab_attentions", ""))) if arch == args.arch else set()
    if not source_collab <= set(attentions):
        raise CheckpointError(
            f"the checkpoint's concatenated-heads attentions {sorted(source_collab)} must all be converted: "
            f"add them to --attentions (one model has one kind of reduced heads)"
        )
    heads = attention_heads(args)
    old = state["model"]
    new = dict(old)
    report = []
    layers = [(p, k) for p, k in attention_layers(old).items() if k in attentions]
    if not layers:
        raise CheckpointError(f"no {', '.join(attentions)} attention layers in the checkpoint")
    if max_error is None:  # every D_k is known: check that the model they describe can be built, before converting
        planned = {(k, int(p.split(".")[2])): layer_key_dims.get((k, int(p.split(".")[2])), key_dim) for p, k in layers}
        converted_model_args(args, arch, planned, key_dim, attentions, mixing_lr_scale)
    for prefix, kind in progress(layers, desc="CP decomposition", unit="layer"):
        index = int(prefix.split(".")[2])
        weights = AttentionWeights(
            q_weight=old[f"{prefix}.q_proj.weight"].to(device, torch.float32),
            q_bias=_maybe(old.get(f"{prefix}.q_proj.bias"), device),
            k_weight=old[f"{prefix}.k_proj.weight"].to(device, torch.float32),
            num_heads=heads[kind],
        )
        try:
            if (kind, index) in layer_key_dims or max_error is None:
                collab = reparametrize_attention(weights, layer_key_dims.get((kind, index), key_dim), n_iter=n_iter)
            else:
                collab = smallest_key_dim(weights, max_error, n_iter)
        except ValueError as err:
            raise CheckpointError(f"{prefix}: {err}") from None
        _write_layer(new, prefix, collab, heads[kind], mixing_lr_scale)
        report.append(
            {
                "layer": prefix,
                "attention": kind,
                "key_dim": collab.q_weight.size(0),
                "relative_error": collab.relative_error,
                "seconds": collab.seconds,
            }
        )

    chosen = {(r["attention"], int(r["layer"].split(".")[2])): r["key_dim"] for r in report}
    default_dim = key_dim if key_dim is not None else Counter(chosen.values()).most_common(1)[0][0]
    new_args = converted_model_args(args, arch, chosen, default_dim, attentions, mixing_lr_scale)

    out = {k: v for k, v in state.items() if k not in ("last_optimizer_state", "model")}
    out["model"] = new
    if out.get("cfg") is not None:
        out["cfg"] = copy.copy(out["cfg"])
        out["cfg"]["model"] = new_args
    if out.get("args") is not None:
        out["args"] = new_args
    out["extra_state"] = dict(
        out.get("extra_state") or {}, collab_reparametrized={"key_dim": default_dim, "layers": report}
    )
    return out, report


def converted_model_args(
    args: argparse.Namespace,
    arch: str,
    key_dims: Dict[Tuple[str, int], int],
    default_dim: int,
    attentions: List[str],
    mixing_lr_scale: float,
) -> TransformerCollabArgs:
    """The converted model's arguments: the source's, the collab options' defaults where it has none, and what the
    conversion sets; checked as fairseq will when it builds the model (CheckpointError if it cannot be built).

    The mixing matrix comes from the decomposition, so the stored ``collab_mixing_init`` only has to let the model
    be built: ``concatenate`` where every D_k splits into the heads, else ``normal``."""
    heads = attention_heads(args)
    splits = all(d % heads[kind] == 0 for (kind, _), d in key_dims.items())
    converted = dict(
        arch=arch,
        _name=arch,
        collab_key_dim=default_dim,
        collab_layer_key_dims=format_layer_key_dims({where: d for where, d in key_dims.items() if d != default_dim}),
        collab_mode="collaborative",
        collab_attentions=",".join(a for a in ATTENTIONS if a in attentions),
        collab_mixing_init="concatenate" if splits else "normal",
        collab_mixing_lr_scale=mixing_lr_scale,
        collab_no_content_bias=False,
    )
    new_args = TransformerCollabArgs(**{**COLLAB_OPTIONS, **copy.deepcopy(vars(args)), **converted})
    try:
        collab_layers(new_args)
    except ValueError as err:
        raise CheckpointError(f"the converted model could not be loaded: {err}") from None
    return new_args


def _maybe(t, device):
    return None if t is None else t.to(device, torch.float32)


def _write_layer(sd: dict, prefix: str, w: CollaborativeWeights, num_heads: int, mixing_lr_scale: float):
    """Replace the attention layer at ``prefix`` of state dict ``sd`` by a collaborative layer with the key/query
    weights ``w``, written through the layer itself; its other weights (values, output) are the source's."""
    old = {k[len(prefix) + 1 :]: v for k, v in sd.items() if k.startswith(prefix + ".")}
    dtype = old["q_proj.weight"].dtype
    layer = CollaborativeMultiheadAttention(
        w.q_weight.size(1),
        num_heads,
        kdim=w.k_weight.size(1),
        vdim=old["v_proj.weight"].size(1),
        key_dim=w.q_weight.size(0),
        mixing_init="normal",  # set below
        mixing_lr_scale=mixing_lr_scale,
    )
    same_shape = {k: v for k, v in layer.state_dict().items() if k in old and old[k].shape == v.shape}
    layer.load_state_dict({k: old[k] for k in same_shape}, strict=False)
    with torch.no_grad():
        layer.q_proj.weight.copy_(w.q_weight)
        layer.k_proj.weight.copy_(w.k_weight)
        layer.content_bias.weight.copy_(w.content_bias)
    layer.set_mixing_(w.mixing.cpu())
    for key in old:
        del sd[f"{prefix}.{key}"]
    for key, value in layer.state_dict().items():
        sd[f"{prefix}.{key}"] = value.to(dtype) if value.dtype == torch.float32 else value


def check_output(path: str, force: bool = False) -> None:
    """Raise CheckpointError unless ``path`` can be written (and, without ``force``, does not exist yet): called
    before the conversion, so that a bad output path costs no decomposition."""
    if os.path.exists(path) and not force:
        raise CheckpointError(f"{path} exists: choose another output path, or pass --force to overwrite it")
    check_writable(path)


def save_atomically(state: dict, path: str, force: bool = False) -> None:
    """Write the checkpoint whole (a temporary file beside ``path``, then renamed), mode 0o666 less the umask."""
    check_output(path, force)
    save_checkpoint_atomically(state, path)
