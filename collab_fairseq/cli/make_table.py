"""Collect the runs of a sweep into a markdown table (and a BLEU vs D_k plot).

    python -m collab_fairseq.cli.make_table RUNS_DIR --out results/multi30k_en_de/table.md \
        --plot results/multi30k_en_de/bleu.png --summary results/multi30k_en_de_table.json

Each run directory holds ``bleu.json`` (collab_fairseq.cli.evaluate) and ``train.log`` (fairseq-train).
Runs are grouped by (heads, D_k, tag); seeds are summarised as mean (min-max). Every row carries the code that
trained it (``code``: a hash of collab_fairseq/, ``commit``; see collab_fairseq/provenance.py), its updates and
its warm start. Rows of different collab_fairseq/ code are refused in one table unless --allow-mixed-code, and
rows whose code is not this checkout's are listed as stale. ``--out`` also writes every run's row as JSON beside the
table; ``--summary`` writes one JSON row per table row (seeds, BLEU mean and range, commit, updates, warm start,
study = RUNS_DIR), keeping the rows of other studies that the file already holds.
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from typing import Dict

from collab_fairseq.files import write_text_atomically
from collab_fairseq.provenance import code_hash

PARAMS = re.compile(r"num\. shared model params: ([\d,]+)")
TRAIN_END = re.compile(r"\| train \| epoch \d+ \|.*?\| wps ([\d.]+) .*?\| num_updates (\d+)")
VALID = re.compile(r"valid on 'valid' subset \| loss ([\d.]+)")
COLLAB_ATTENTIONS = re.compile(r"collaborative attention: .*?attentions=([\w,]+)")
NO_CONTENT_BIAS = re.compile(r"collaborative attention: .*?content_bias=False")


def read_train_log(path):
    """-> dict(params, wps (mean over epochs), updates, best_valid_loss, collab_attentions, content_bias) from a
    fairseq-train log."""
    info = {"params": None, "wps": None, "updates": None, "best_valid_loss": None, "collab_attentions": None,
            "content_bias": True}  # fmt: skip
    if not os.path.exists(path):
        return info
    text = open(path, encoding="utf-8", errors="replace").read()
    if m := PARAMS.findall(text):
        info["params"] = int(m[-1].replace(",", ""))
    epochs = TRAIN_END.findall(text)
    if epochs:
        info["wps"] = statistics.mean(float(w) for w, _ in epochs)
        info["updates"] = int(epochs[-1][1])
    if m := VALID.findall(text):
        info["best_valid_loss"] = min(float(v) for v in m)
    if m := COLLAB_ATTENTIONS.findall(text):
        info["collab_attentions"] = m[-1].split(",")
        info["content_bias"] = not NO_CONTENT_BIAS.search(text)  # logged since 2026-11-27; older logs: on
    return info


def attention_params(checkpoint):
    """Parameters of all attention layers (self and cross) in a checkpoint."""
    from collab_fairseq.files import load_checkpoint_file

    model = load_checkpoint_file(checkpoint)["model"]
    return sum(v.numel() for k, v in model.items() if "_attn." in k and "layer_norm" not in k)


def closed_form_attention_params(row, layout):
    """Attention parameters from the closed form, for runs whose checkpoint is gone: layout = (E, H, layers)."""
    from collab_fairseq.modules.collaborative_attention import attention_parameter_count

    embed_dim, heads, layers = layout
    full = attention_parameter_count(embed_dim, heads, embed_dim, "concatenate")
    if row.get("heads") == "transformer":
        return layers * full
    mode = "collaborative" if row.get("heads") == "collab" else "concatenate"
    reduced = attention_parameter_count(
        embed_dim, heads, int(row["key_dim"]), mode, content_bias=row.get("content_bias", True)
    )
    kinds = row.get("collab_attentions") or ["encoder_self", "decoder_self", "encoder_decoder"]
    per_kind = layers // 3  # the layers of each of the three attentions; those not in kinds stay full
    return per_kind * (len(kinds) * reduced + (3 - len(kinds)) * full)


def collect(runs_dir, layout=None):
    rows = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "bleu.json"))):
        run_dir = os.path.dirname(path)
        result = json.load(open(path))
        result.update(read_train_log(os.path.join(run_dir, "train.log")))
        ckpt = result.get("checkpoint")
        if ckpt and os.path.exists(ckpt):
            result["attention_params"] = attention_params(ckpt)
        else:
            result["attention_params"] = closed_form_attention_params(result, layout) if layout else None
        result.setdefault("code", None)
        result.setdefault("commit", None)
        if "warm_start" not in result:  # bleu.json written before the sweep recorded it: the run name's tag
            m = re.search(r"_ws(\d+)", result.get("tag") or "")
            result["warm_start"] = int(m.group(1)) if m else None
        if result["warm_start"] and result["updates"] is not None:  # the log is the collaborative phase's
            result["phase_updates"] = result["updates"]
            result["updates"] += result["warm_start"]
        rows.append(result)
    return rows


def merged_summary(path, runs_dir, rows) -> list:
    """``summary(rows)``, each row marked with its study (``runs_dir``), after the rows of other studies that the
    JSON file at ``path`` already holds: a corpus's file gathers its studies, and a study made again replaces its
    own rows only."""
    study = os.path.normpath(runs_dir)
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = [r for r in json.load(f) if r.get("study") != study]
    return kept + [{**row, "study": study} for row in summary(rows)]


class MixedCodeError(ValueError):
    """Rows trained by different collab_fairseq/ code."""


def check_code(rows, allow_mixed: bool = False):
    """Refuse rows of different collab_fairseq/ code (unless ``allow_mixed``); return the runs whose code is not
    this checkout's, i.e. stale: re-running their command now may give another number."""
    current = code_hash()
    by_code = defaultdict(list)
    for r in rows:
        by_code[r.get("code")].append(r.get("run", "?"))
    if len(by_code) > 1 and not allow_mixed:
        listing = "; ".join(f"code {c or 'unknown'}: {', '.join(sorted(runs))}" for c, runs in by_code.items())
        raise MixedCodeError(
            f"the runs were trained by {len(by_code)} versions of collab_fairseq/ ({listing}): re-run the stale "
            "ones, or pass --allow-mixed-code to tabulate them together (the table then has a code column)"
        )
    return sorted(r.get("run", "?") for r in rows if r.get("code") != current)


def _fmt(values, digits=1):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.mean(values)
    if min(values) == max(values):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _int(value):
    return f"{value:,}" if value is not None else "-"


def _updates(rows):
    """'1800', '2727 (2420-3217)' (early stopping), or a warm start's '600 + 1200' (transformer + collaborative)."""
    first = rows[0]
    if first.get("phase_updates") is not None:
        return f"{first['warm_start']} + " + _fmt([r.get("phase_updates") for r in rows], 0)
    return _fmt([r.get("updates") for r in rows], 0)


def grouped(rows):
    """[((heads, D_k, tag), runs)]: the transformer, then concatenated and collaborative heads, wide keys first."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r.get("heads", "?"), r.get("key_dim", 0), r.get("tag", ""))].append(r)
    order = {"transformer": 0, "concat": 1, "collab": 2}
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), -kv[0][1], kv[0][2]))


def summary(rows):
    """One JSON row per table row: heads, key_dim, tag, seeds (their number and list), bleu_mean / min / max,
    best_valid_loss_mean, commit and code (each, or the sorted distinct ones), updates (the total of one run, or
    each run's where they differ), warm_start."""

    def one_or_all(values):
        distinct = sorted({v for v in values if v is not None}, key=str)
        return distinct[0] if len(distinct) == 1 else distinct or None

    out = []
    for (heads, key_dim, tag), rs in grouped(rows):
        bleu = [r["sacrebleu"] for r in rs]
        losses = [r["best_valid_loss"] for r in rs if r.get("best_valid_loss") is not None]
        updates = [r.get("updates") for r in rs]
        out.append({
            "heads": heads, "key_dim": key_dim, "tag": tag or "", "seeds": len(rs),
            "seed_list": sorted(r.get("seed") for r in rs if r.get("seed") is not None),
            "bleu_mean": round(statistics.mean(bleu), 2), "bleu_min": min(bleu), "bleu_max": max(bleu),
            "best_valid_loss_mean": round(statistics.mean(losses), 3) if losses else None,
            "commit": one_or_all(r.get("commit") for r in rs), "code": one_or_all(r.get("code") for r in rs),
            "updates": updates[0] if len(set(updates)) == 1 else updates,
            "warm_start": one_or_all(r.get("warm_start") for r in rs),
        })  # fmt: skip
    return out


def table(rows, code_column: bool = False):
    lines = [
        # no words/s column: a sweep's runs share GPUs, so their speeds compare nothing (results/performance/ does)
        "| heads | D_k | tag | seeds | test BLEU mean (range) | best valid loss | attention params | total params "
        "| updates |" + (" code |" if code_column else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if code_column else ""),
    ]
    for (heads, key_dim, tag), rs in grouped(rows):
        first = rs[0]
        cells = [
            heads,
            key_dim,
            tag or "-",
            len(rs),
            _fmt([r["sacrebleu"] for r in rs], 2),
            _fmt([r["best_valid_loss"] for r in rs], 3),
            _int(first["attention_params"]),
            _int(first["params"]),
            _updates(rs),
        ]
        if code_column:
            cells.append(", ".join(sorted({str(r.get("code")) for r in rs})))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def baselines(rows) -> Dict[str, float]:
    """Horizontal lines of the plot: mean BLEU of the transformer rows per tag ('transformer', or e.g.
    'transformer uniform_all' for a control), the untagged/first-seen tag first."""
    by_tag = defaultdict(list)
    for r in sorted(rows, key=lambda r: "uniform" in (r.get("tag") or "")):
        if r.get("heads") == "transformer":
            by_tag[r.get("tag") or ""].append(r["sacrebleu"])
    names = {tag: re.sub(r"^transformer_", "", tag.lstrip("_")) for tag in by_tag}
    return {f"transformer {names[tag]}".strip(): statistics.mean(b) for tag, b in by_tag.items()}


def plot(rows, path):
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before the import, which logs at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    series = defaultdict(lambda: defaultdict(list))  # (heads, tag) -> D_k -> BLEUs; tagged rows are ablations
    for r in rows:
        if r.get("heads") in ("collab", "concat"):
            series[(r["heads"], r.get("tag") or "")][r["key_dim"]].append(r["sacrebleu"])
    markers = {"collab": "o", "concat": "s"}
    for (heads, tag), by_dk in sorted(series.items()):
        dks = sorted(by_dk)
        means = [statistics.mean(by_dk[d]) for d in dks]
        ax.errorbar(
            dks,
            means,
            yerr=[[m - min(by_dk[d]) for d, m in zip(dks, means)], [max(by_dk[d]) - m for d, m in zip(dks, means)]],
            marker=markers[heads],
            label=f"{heads} {tag.lstrip('_')}".strip(),
            capsize=3,
        )
    for i, (label, bleu) in enumerate(baselines(rows).items()):
        ax.axhline(bleu, color="gray" if i == 0 else f"C{i + 3}", linestyle="--" if i == 0 else ":", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("key/query dimension D_k")
    ax.set_ylabel("test BLEU")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir")
    parser.add_argument("--out", help="write the markdown table here (atomic)")
    parser.add_argument("--plot", help="write a BLEU vs D_k plot here (needs matplotlib)")
    parser.add_argument(
        "--summary",
        help="write one JSON row per table row here (atomic), e.g. results/CORPUS_table.json, each marked with its "
        "study (RUNS_DIR); rows of other studies already in the file are kept",
    )
    parser.add_argument(
        "--attention-layout",
        help="E,H,LAYERS: count attention parameters in closed form when checkpoints are gone "
        "(transformer_iwslt_de_en: 512,4,18)",
    )
    parser.add_argument(
        "--allow-mixed-code", action="store_true", help="tabulate runs trained by different collab_fairseq/ code"
    )
    args = parser.parse_args(argv)
    layout = tuple(int(x) for x in args.attention_layout.split(",")) if args.attention_layout else None
    rows = collect(args.runs_dir, layout)
    if not rows:
        parser.error(f"no */bleu.json under {args.runs_dir}: run the sweep first")
    try:
        stale = check_code(rows, args.allow_mixed_code)
    except MixedCodeError as err:
        parser.error(str(err))
    if stale:
        print(
            f"stale (trained by other collab_fairseq/ code than this checkout's): {', '.join(stale)}", file=sys.stderr
        )
    text = table(rows, code_column=args.allow_mixed_code)
    print(text)
    if args.out:
        write_text_atomically(args.out, text)
        write_text_atomically(os.path.splitext(args.out)[0] + ".json", json.dumps(rows, indent=1))
    if args.summary:
        write_text_atomically(args.summary, json.dumps(merged_summary(args.summary, args.runs_dir, rows), indent=1))
    if args.plot:
        try:
            plot(rows, args.plot)
        except ImportError:
            print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
