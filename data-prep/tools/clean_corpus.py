"""Normalise and filter a parallel corpus (the cleaning step of data-prep/prepare-wmt14-en-de.sh).

    python data-prep/tools/clean_corpus.py --src a.en --tgt a.de --out-prefix clean/train --langs en de \
        [--min-words 1 --max-words 250 --max-ratio 1.5]

Per pair: Unicode NFKC, whitespace collapsed; dropped when either side is empty, longer than --max-words,
or the word-count ratio exceeds --max-ratio (as Moses' clean-corpus-n.perl). Both outputs are written to
temporary files and renamed together at the end.
"""

import argparse
import os
import sys
import unicodedata


def normalise(line: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", line).split())


def keep(src: str, tgt: str, min_words: int, max_words: int, max_ratio: float) -> bool:
    ns, nt = len(src.split()), len(tgt.split())
    if min(ns, nt) < min_words or max(ns, nt) > max_words:
        return False
    return max(ns, nt) / max(min(ns, nt), 1) <= max_ratio


def clean(src_path, tgt_path, out_prefix, langs, min_words=1, max_words=250, max_ratio=1.5):
    """Returns (pairs read, pairs kept). Raises ValueError if the two sides differ in length."""
    outs = [f"{out_prefix}.{lang}" for lang in langs]
    tmps = [path + ".tmp" for path in outs]
    read = kept = 0
    with open(src_path, encoding="utf-8", errors="replace") as fs, open(
        tgt_path, encoding="utf-8", errors="replace"
    ) as ft, open(tmps[0], "w", encoding="utf-8") as os_, open(tmps[1], "w", encoding="utf-8") as ot:
        for src, tgt in zip(fs, ft):
            read += 1
            src, tgt = normalise(src), normalise(tgt)
            if keep(src, tgt, min_words, max_words, max_ratio):
                os_.write(src + "\n")
                ot.write(tgt + "\n")
                kept += 1
        if fs.readline() or ft.readline():
            for tmp in tmps:
                os.remove(tmp)
            raise ValueError(f"{src_path} and {tgt_path} have different numbers of lines: not a parallel corpus")
    for tmp, out in zip(tmps, outs):
        os.replace(tmp, out)
    return read, kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True)
    parser.add_argument("--tgt", required=True)
    parser.add_argument("--out-prefix", required=True)
    parser.add_argument("--langs", nargs=2, required=True, metavar=("SRC", "TGT"))
    parser.add_argument("--min-words", type=int, default=1)
    parser.add_argument("--max-words", type=int, default=250)
    parser.add_argument("--max-ratio", type=float, default=1.5)
    args = parser.parse_args(argv)
    read, kept = clean(args.src, args.tgt, args.out_prefix, args.langs, args.min_words, args.max_words, args.max_ratio)
    print(f"{args.src}: kept {kept} of {read} pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
