"""The update at which a fairseq-train run reached its lowest validation loss, read from its log: the budget that a
corpus's sweep gives every row (the transformer trained to convergence with --patience first).

Standard library only, so the recipes run it as a file without importing torch:

    python3 collab_fairseq/cli/best_update.py work/tatoeba_en_de/runs/budget_transformer_s1/train.log
    -> 8640
"""

import argparse
import re
import sys

VALID = re.compile(r"valid on 'valid' subset \| loss ([\d.]+) .*?\| num_updates (\d+)")


def best_update(log: str) -> int:
    """num_updates of the validation with the lowest loss (the first of equals); ValueError if there is none."""
    validations = [(float(loss), int(updates)) for loss, updates in VALID.findall(log)]
    if not validations:
        raise ValueError("no validation line (\"valid on 'valid' subset | loss ...\") in the log")
    return min(validations, key=lambda v: v[0])[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="a fairseq-train log (train.sh writes SAVE_DIR/train.log)")
    args = parser.parse_args(argv)
    try:
        with open(args.log, encoding="utf-8", errors="replace") as f:
            print(best_update(f.read()))
    except (OSError, ValueError) as err:
        print(f"error: {args.log}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
