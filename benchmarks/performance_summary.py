"""results/performance/summary.json from the benchmarks' JSON files: the kernel issue's figures in one place.

    python benchmarks/performance_summary.py --gpu "NVIDIA H100 80GB HBM3" --commit COMMIT \\
        --train train.json --beam beam.json --layer layer_bfloat16.json \\
        --loss-scale loss_scale.json --out results/performance/summary.json \\
        [--source-commit layer=OLDER_COMMIT ...] [--stale layer_speed_ratio="why" ...] [--note KEY="..." ...]
        [--fast-beam fast_beam.json] [--fast-train fast_train.json] [--merge results/performance/summary.json]

train: train_throughput.py (rows transformer_wmt_en_de, collab_dk512/128/64); the warm-start recipe's ratio is
its time-weighted mean, 1 / (f + (1 - f) / r) for a transformer phase of fraction f of the updates (1/3 in the
Multi30k recipe; the conversion's seconds not counted). beam: beam_search.py. layer: attention_layer.py, the rows
of ``ours (KERNEL)``, for ``auto`` (the default) of the kernel it picks at each length. loss-scale:
fp16_loss_scale.py, lowest scale over the runs whose name starts with ``transformer`` and ``collab_dk128``.
fast-beam: beam_search.py with the configurations transformer_fairseq, transformer_static, collab_dk128_fairseq and
collab_dk128_static (fairseq's search / the package's, ``--task translation_fast``): ``fast_beam_ratio`` (the
package's against fairseq's for D_k 128, and D_k 128 against the transformer under the package's) and
``fast_beam_cache_key_ratio`` (bytes of the self-attention key cache, D_k 128 / transformer), with
``fast_beam_commit``. fast-train: train_throughput.py with the configurations transformer_stock (``--task
translation``), transformer_fast, collab_dk128_fast and collab_dk64_fast (``--task translation_fast --train-step
auto``): ``fast_train_wps_ratio`` (median over repeats of the per-repeat ratios of words/s: D_k 128 / 64 under the
fast step against the stock transformer and against the transformer under the same step) and ``fast_train_memory_ratio``
(peak reserved GPU memory, which holds the graphs' pool, of the transformer under the fast step / stock), with
``fast_train_commit``. ``--merge``: start from an existing summary, keeping what this run does not replace.
``commits`` names the commit each figure was measured on (--commit unless --source-commit says otherwise), and
``stale`` the figures whose code has changed since, with the reason; ``notes`` what a figure needs said beside it
(e.g. the same code measured on other machines).
"""

import argparse
import json
import statistics
import sys

from collab_fairseq.modules.attention_kernels import kernel_preferences


def train_ratios(train: dict, warm_start_fraction: float) -> dict:
    rows = {row["name"]: row for row in train["rows"]}
    out = {f"dk{d}": rows[f"collab_dk{d}"]["ratio"] for d in (512, 128, 64) if f"collab_dk{d}" in rows}
    if "dk128" in out:
        out["warm_start_recipe"] = 1 / (warm_start_fraction + (1 - warm_start_fraction) / out["dk128"])
    return out


def layer_ratios(layer: dict, kernel: str) -> dict:
    """{speed, flop, memory} x {dk128_1024, ...} of the rows ``ours (kernel)``; for ``auto``, per shape the kernel
    the default picks on CUDA at that length (self-attention: as many keys as tokens)."""
    out = {"layer_speed_ratio": {}, "layer_flop_ratio": {}, "layer_memory_ratio": {}, "layer_kernel": {}}
    for row in layer["rows"]:
        tokens = int(row["shape"].split("x")[1])
        chosen = kernel_preferences(kernel, True, tokens, tokens)[0]
        if row["layer"] != f"ours ({chosen})" or "ratio" not in row:
            continue
        key = f"dk{row['key_dim']}_{tokens}"
        out["layer_kernel"][key] = chosen
        out["layer_speed_ratio"][key] = row["ratio"]
        out["layer_flop_ratio"][key] = row["flop_ratio"]
        out["layer_memory_ratio"][key] = row["memory_ratio"]
    return out


def lowest_scale(runs: dict, prefix: str):
    scales = [run["min_scale"] for name, run in runs.items() if name.startswith(prefix)]
    return min(scales) if scales else None


def _load(path):
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


SOURCES = ("train", "beam", "layer", "loss_scale", "fast_beam", "fast_train")
FAST_BEAM_CONFIGS = ("transformer_fairseq", "transformer_static", "collab_dk128_fairseq", "collab_dk128_static")


def fast_beam(beam: dict) -> dict:
    """fast_beam_ratio and fast_beam_cache_key_ratio of a beam_search.py run of FAST_BEAM_CONFIGS."""
    rate = {(r["config"], r["length"]): r["sentences_per_s"] for r in beam["rows"]}
    missing = sorted({c for c in FAST_BEAM_CONFIGS} - {c for c, _ in rate})
    if missing:
        raise ValueError(f"the fast-beam file lacks the configurations {', '.join(missing)}")
    ratios = {}
    for length in sorted({n for _, n in rate}):
        ours = rate[("collab_dk128_static", length)]
        ratios[f"vs_stock_{length}"] = ours / rate[("collab_dk128_fairseq", length)]
        ratios[f"collab_vs_transformer_{length}"] = ours / rate[("transformer_static", length)]
    cache = {r["config"]: r["cache_bytes"] for r in beam["rows"] if r.get("cache_bytes")}
    key_ratio = cache["collab_dk128_static"]["keys"] / cache["transformer_static"]["keys"]
    return {"fast_beam_ratio": ratios, "fast_beam_cache_key_ratio": key_ratio}


FAST_TRAIN_CONFIGS = ("transformer_stock", "transformer_fast", "collab_dk128_fast", "collab_dk64_fast")


def fast_train(train: dict) -> dict:
    """fast_train_wps_ratio and fast_train_memory_ratio of a train_throughput.py run of FAST_TRAIN_CONFIGS."""
    rows = {row["name"]: row for row in train["rows"]}
    missing = [c for c in FAST_TRAIN_CONFIGS if c not in rows]
    if missing:
        raise ValueError(f"the fast-train file lacks the configurations {', '.join(missing)}")

    def ratio(name, base):
        pairs = zip(rows[name]["runs"], rows[base]["runs"])
        return statistics.median(run["wps_median"] / other["wps_median"] for run, other in pairs)

    ratios = {}
    for d in (128, 64):
        ratios[f"dk{d}_vs_stock"] = ratio(f"collab_dk{d}_fast", "transformer_stock")
        ratios[f"dk{d}_vs_fast_transformer"] = ratio(f"collab_dk{d}_fast", "transformer_fast")

    def reserved(name):
        return max(run.get("peak_gpu_reserved_bytes") or 0 for run in rows[name]["runs"])

    memory = reserved("transformer_fast") / reserved("transformer_stock") if reserved("transformer_stock") else None
    return {"fast_train_wps_ratio": ratios, "fast_train_memory_ratio": {"transformer": memory}}


def key_values(pairs, option, allowed=None) -> dict:
    """{KEY: VALUE} from repeated ``KEY=VALUE`` options; a clear ValueError for anything else."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not value or (allowed and key not in allowed):
            keys = f" with KEY one of {', '.join(allowed)}" if allowed else ""
            raise ValueError(f"{option} {pair!r}: expected KEY=VALUE{keys}")
        out[key] = value
    return out


def summary(args) -> dict:
    train, beam, layer, scale = _load(args.train), _load(args.beam), _load(args.layer), _load(args.loss_scale)
    fast, fast_step = _load(args.fast_beam), _load(args.fast_train)
    source_commit = {name: args.commit for name in SOURCES}
    source_commit.update(key_values(args.source_commit, "--source-commit", SOURCES))
    stale, notes = key_values(args.stale, "--stale"), key_values(args.note, "--note")
    merged = _load(args.merge) or {}
    result = {k: v for k, v in merged.items() if k not in ("commits", "stale", "notes")}
    result.update(gpu=args.gpu, commit=args.commit)
    commits = dict(merged.get("commits", {}))
    if train:
        result["train_wps_ratio"] = train_ratios(train, args.warm_start_fraction)
        commits["train_wps_ratio"] = source_commit["train"]
        dk128 = next((r for r in train["rows"] if r["name"] == "collab_dk128"), None)
        if dk128 and "memory_ratio" in dk128:
            result["peak_memory_ratio"] = {"dk128": dk128["memory_ratio"]}
            commits["peak_memory_ratio"] = source_commit["train"]
    if beam:
        rows = [r for r in beam["rows"] if r["config"] == "collab_dk128"]
        result["beam_sentences_ratio"] = {str(r["length"]): r["ratio"] for r in rows}
        commits["beam_sentences_ratio"] = source_commit["beam"]
    if layer:
        layer_result = layer_ratios(layer, args.layer_kernel)
        result.update(layer_result, layer_dtype=layer["dtype"])
        commits.update({key: source_commit["layer"] for key in layer_result})
    if scale:
        result["loss_scale_min"] = {k: lowest_scale(scale, k) for k in ("transformer", "collab_dk128")}
        commits["loss_scale_min"] = source_commit["loss_scale"]
    if fast:
        result.update(fast_beam(fast), fast_beam_commit=source_commit["fast_beam"])
        commits.update(fast_beam_ratio=source_commit["fast_beam"], fast_beam_cache_key_ratio=source_commit["fast_beam"])
    if fast_step:
        result.update(fast_train(fast_step), fast_train_commit=source_commit["fast_train"])
        commits.update(fast_train_wps_ratio=source_commit["fast_train"],
                       fast_train_memory_ratio=source_commit["fast_train"])  # fmt: skip
    for option, named in (("--stale", stale), ("--note", notes)):
        unknown = sorted(set(named) - set(result))
        if unknown:
            raise ValueError(f"{option} names {', '.join(unknown)}, which this summary does not hold")
    # "commit" is the latest code measured; "commits" says which commit each figure comes from
    result["commits"] = commits
    stale = {**merged.get("stale", {}), **stale}
    notes = {**merged.get("notes", {}), **notes}
    if stale:
        result["stale"] = stale
    if notes:
        result["notes"] = notes
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", required=True)
    parser.add_argument("--commit", required=True, help="the commit whose code was measured")
    parser.add_argument(
        "--source-commit",
        action="append",
        help="SOURCE=COMMIT (SOURCE: train, beam, layer, loss_scale, fast_beam or fast_train): a source measured on "
        "older code "
        "than --commit",
    )
    parser.add_argument("--stale", action="append", help="KEY=REASON: a figure the code has changed under since")
    parser.add_argument("--note", action="append", help="KEY=TEXT: what to say beside a figure")
    parser.add_argument("--train")
    parser.add_argument("--warm-start-fraction", type=float, default=1 / 3)
    parser.add_argument("--beam")
    parser.add_argument("--layer")
    parser.add_argument("--layer-kernel", default="auto", help="the kernel whose layer rows count; auto: the default's")
    parser.add_argument("--loss-scale")
    parser.add_argument("--fast-beam", help="beam_search.py's JSON of FAST_BEAM_CONFIGS")
    parser.add_argument("--fast-train", help="train_throughput.py's JSON of FAST_TRAIN_CONFIGS")
    parser.add_argument("--merge", help="an existing summary to start from")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        result = summary(args)
    except (OSError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
