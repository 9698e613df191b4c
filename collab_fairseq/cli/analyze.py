"""collab-analyze: which D_k does a trained model need? The singular value spectrum of each attention
layer's key/query products, and the dimension that keeps 90/95/99 % of their energy.

    collab-analyze checkpoints/transformer/checkpoint_best.pt --plot spectrum.png --json spectrum.json

Per layer it prints the dimension needed on the query side and on the key side (the shared W_Q and W_K
of a collaborative layer), and their maximum: the D_k to try (then collab-reparametrize --key-dim).
"""

import argparse
import importlib.util
import json
import sys

import collab_fairseq  # noqa: F401  (allowlists fairseq's checkpoint objects for safe loading)
from collab_fairseq.models.collab_config import attention_heads
from collab_fairseq.reparam.convert_checkpoint import (
    CheckpointError,
    attention_layers,
    load_checkpoint,
    model_args,
    target_arch,
)
from collab_fairseq.reparam.spectrum import ENERGIES, energy_dims, layer_products, layer_spectrum


def analyze(path: str):
    state = load_checkpoint(path)
    args = model_args(state)
    target_arch(args)  # a transformer (or concatenated heads), or a CheckpointError naming what is supported
    heads = attention_heads(args)
    rows = []
    for prefix, kind in attention_layers(state["model"]).items():
        spectra = layer_spectrum(layer_products(state["model"], prefix, heads[kind]))
        dims = {side: energy_dims(s) for side, s in spectra.items()}
        rows.append(
            {
                "layer": prefix,
                "attention": kind,
                "heads": heads[kind],
                "query_dims": dict(zip(map(str, ENERGIES), dims["query"])),
                "key_dims": dict(zip(map(str, ENERGIES), dims["key"])),
                "dims": dict(zip(map(str, ENERGIES), [max(a, b) for a, b in zip(dims["query"], dims["key"])])),
                "singular_values": {side: s.tolist() for side, s in spectra.items()},
            }
        )
    if not rows:
        raise CheckpointError(f"{path} has no attention layers (q_proj/k_proj) to analyse")
    return rows


def plot(rows, out):
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before the import, which logs at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, kind in zip(axes, ("encoder_self", "decoder_self", "encoder_decoder")):
        for row in (r for r in rows if r["attention"] == kind):
            s = np.asarray(row["singular_values"]["query"]) ** 2
            ax.plot(np.arange(1, len(s) + 1), np.cumsum(s) / s.sum(), label=row["layer"].split(".")[2])
        ax.set_title(kind)
        ax.set_xlabel("dimensions kept (query side)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("energy kept")
    axes[-1].legend(title="layer", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="collab-analyze", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", help="a fairseq checkpoint, or the --json file of an earlier run (to re-plot it)")
    p.add_argument("--plot", help="save the cumulative-energy curves here (png)")
    p.add_argument("--json", help="save every spectrum and dimension here")
    args = p.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib: pip install matplotlib (or the package's extra: pip install -e '.[plot]')")
    try:
        if args.checkpoint.endswith(".json"):
            with open(args.checkpoint) as f:
                rows = json.load(f)
        else:
            rows = analyze(args.checkpoint)
    except CheckpointError as err:
        print(f"collab-analyze: error: {err}", file=sys.stderr)
        return 2
    pct = [f"{int(e * 100)}%" for e in ENERGIES]
    print(f"{'layer':<32} {'attention':<16} " + " ".join(f"D_k@{p:>4}" for p in pct) + "   (query / key side)")
    for r in rows:
        dims = " ".join(f"{r['dims'][str(e)]:>8}" for e in ENERGIES)
        detail = ", ".join(f"{r['query_dims'][str(e)]}/{r['key_dims'][str(e)]}" for e in ENERGIES)
        print(f"{r['layer']:<32} {r['attention']:<16} {dims}   ({detail})")
    for e, name in zip(ENERGIES, pct):
        print(f"max over layers for {name} of the energy: D_k = {max(r['dims'][str(e)] for r in rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
