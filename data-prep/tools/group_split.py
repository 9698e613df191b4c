"""Split a parallel corpus into train / valid / test by groups of pairs that share a sentence (used by
data-prep/prepare-tatoeba-en-de.sh).

Tatoeba gives one English sentence several German translations and the reverse; a random split by pair would put
the same sentence in training and test. Here pairs linked by an identical source or an identical target sentence
(transitively) form a group; groups are drawn in a seeded random order and taken whole into test, then valid,
while they fit the requested sizes; everything else is training. So no valid or test sentence occurs in training
(or in the other held-out split) on either side, which the tool checks before writing. Pairs keep their order.

    python data-prep/tools/group_split.py --src all.en --tgt all.de --src-lang en --tgt-lang de \\
        --valid 2000 --test 3000 --seed 1 --out-dir raw

Writes OUT_DIR/{train,valid,test}.{src,tgt} (each atomically) and OUT_DIR/split.json (settings, sizes, groups,
checksums). A rerun with the same settings and inputs keeps the files; with others it refuses and names the fix.
"""

import argparse
import hashlib
import json
import os
import random
import sys
from typing import Dict, List, Sequence

SPLITS = ("train", "valid", "test")


def groups_of(src: Sequence[str], tgt: Sequence[str]) -> List[List[int]]:
    """Pair indices grouped by shared source or target sentences (union-find), each group in pair order, the groups
    in the order of their first pair."""
    parent = list(range(len(src)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for side in (src, tgt):
        first: Dict[str, int] = {}
        for i, sentence in enumerate(side):
            j = first.setdefault(sentence, i)
            if j != i:
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    members: Dict[int, List[int]] = {}
    for i in range(len(src)):
        members.setdefault(root(i), []).append(i)
    return list(members.values())


def split(groups: List[List[int]], sizes: Dict[str, int], seed: int) -> Dict[str, List[int]]:
    """{split: sorted pair indices}: whole groups, drawn in a seeded order, into test then valid while they fit."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    chosen: Dict[str, List[int]] = {"train": [], "valid": [], "test": []}
    filled = {"valid": 0, "test": 0}
    for g in order:
        group = groups[g]
        for name in ("test", "valid"):
            if filled[name] + len(group) <= sizes[name]:
                chosen[name] += group
                filled[name] += len(group)
                break
        else:
            chosen["train"] += group
    return {name: sorted(indices) for name, indices in chosen.items()}


def check_disjoint(src: Sequence[str], tgt: Sequence[str], parts: Dict[str, List[int]]) -> None:
    """Raise if a sentence of one split occurs in another on either side."""
    for side, text in (("source", src), ("target", tgt)):
        seen: Dict[str, str] = {}
        for name in SPLITS:
            for i in parts[name]:
                other = seen.setdefault(text[i], name)
                if other != name:
                    raise AssertionError(f"{side} sentence {text[i]!r} is in {other} and in {name}")


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_atomically(path: str, lines: Sequence[str]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(path + ".tmp", path)


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--tgt", required=True)
    p.add_argument("--src-lang", required=True)
    p.add_argument("--tgt-lang", required=True)
    p.add_argument("--valid", type=int, required=True, help="pairs in valid (at most; whole groups)")
    p.add_argument("--test", type=int, required=True, help="pairs in test (at most; whole groups)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    settings = {"valid": args.valid, "test": args.test, "seed": args.seed,
                "inputs": {"src": sha256_of(args.src), "tgt": sha256_of(args.tgt)}}  # fmt: skip
    report_path = os.path.join(args.out_dir, "split.json")
    outputs = [os.path.join(args.out_dir, f"{s}.{lang}") for s in SPLITS for lang in (args.src_lang, args.tgt_lang)]
    if os.path.exists(report_path):
        with open(report_path) as f:
            done = json.load(f)
        if done["settings"] != settings:
            fix = "choose another --out-dir for these settings, or delete its split.json and split files"
            print(
                f"error: {args.out_dir} holds a split made with {done['settings']}, not {settings}: {fix}",
                file=sys.stderr,
            )
            return 2
        kept = done["sha256"]
        if all(os.path.exists(path) and sha256_of(path) == kept[os.path.basename(path)] for path in outputs):
            return 0
    src, tgt = read_lines(args.src), read_lines(args.tgt)
    if len(src) != len(tgt):
        print(f"error: {args.src} has {len(src)} lines, {args.tgt} {len(tgt)}: not a parallel corpus", file=sys.stderr)
        return 2
    groups = groups_of(src, tgt)
    parts = split(groups, {"valid": args.valid, "test": args.test}, args.seed)
    check_disjoint(src, tgt, parts)
    os.makedirs(args.out_dir, exist_ok=True)
    for name in SPLITS:
        for lang, text in ((args.src_lang, src), (args.tgt_lang, tgt)):
            write_atomically(os.path.join(args.out_dir, f"{name}.{lang}"), [text[i] for i in parts[name]])
    report = {
        "settings": settings,
        "pairs": {name: len(parts[name]) for name in SPLITS},
        "groups": len(groups),
        "largest_group": max(len(g) for g in groups),
        "sha256": {os.path.basename(path): sha256_of(path) for path in outputs},
    }
    write_atomically(report_path, [json.dumps(report, indent=1)])
    print(json.dumps({k: report[k] for k in ("pairs", "groups", "largest_group")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
