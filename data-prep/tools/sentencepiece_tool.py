"""Train a joint sentencepiece model and encode text with it (used by data-prep/*.sh).

    python data-prep/tools/sentencepiece_tool.py train --input a.en b.de --model-prefix spm --vocab-size 8000
    python data-prep/tools/sentencepiece_tool.py encode --model spm.model < raw > pieces

Outputs are written to a temporary file and renamed, so an interrupted step leaves nothing a rerun would trust.
The segmentation depends on sentencepiece's version (0.2.2 and 0.2.3 train different unigram vocabularies from
the same text), so training refuses any version but the pinned one (SPM_ANY_VERSION=1 accepts it) and writes
the version and settings next to the model (MODEL_PREFIX.json).
"""

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Optional

import sentencepiece as spm

logger = logging.getLogger(__name__)


PINNED_VERSION = "0.2.2"  # as pyproject.toml


def check_version(version: str = spm.__version__) -> None:
    if version != PINNED_VERSION and os.environ.get("SPM_ANY_VERSION") != "1":
        raise RuntimeError(
            f"sentencepiece {version} is installed, but the data are prepared with {PINNED_VERSION}: other versions "
            f"train another vocabulary from the same text (pip install sentencepiece=={PINNED_VERSION}, or set "
            "SPM_ANY_VERSION=1 to prepare data that other runs of this project cannot be compared with)"
        )


def check_existing_model(model_prefix: str, requested: Optional[dict] = None) -> bool:
    """True if model_prefix.model exists and was trained by the pinned sentencepiece with the ``requested`` settings
    (a rerun keeps it); raise if it was trained by another version, before versions were recorded, or with other
    settings (a recorded setting that differs from the requested one: the data would not be what was asked for)."""
    if not os.path.exists(model_prefix + ".model"):
        return False
    settings = {}
    if os.path.exists(model_prefix + ".json"):
        with open(model_prefix + ".json") as f:
            settings = json.load(f)
    version = settings.get("sentencepiece", "unrecorded (before 2026-11-26)")
    if version != PINNED_VERSION and os.environ.get("SPM_ANY_VERSION") != "1":
        out_dir = os.path.dirname(os.path.dirname(os.path.abspath(model_prefix)))
        raise RuntimeError(
            f"{model_prefix}.model was trained by sentencepiece {version}, not {PINNED_VERSION}: its segmentation can "
            f"differ from the project's; delete {out_dir}/spm and {out_dir}/bin and run the data-prep script again"
        )
    changed = {k: (settings[k], v) for k, v in (requested or {}).items() if k in settings and settings[k] != v}
    if changed:
        out_dir = os.path.dirname(os.path.dirname(os.path.abspath(model_prefix)))
        what = ", ".join(f"{k} {old}, not {new}" for k, (old, new) in changed.items())
        raise RuntimeError(
            f"{model_prefix}.model was trained with {what}: choose another --out-dir for these settings, or delete "
            f"{out_dir}/spm and {out_dir}/bin to prepare {out_dir} again with them"
        )
    return True


def train(inputs, model_prefix, vocab_size, model_type="unigram", sample_size=2_000_000, seed=1):
    """Train on ``inputs`` (sampling ``sample_size`` sentences); writes model_prefix.model/.vocab atomically, and
    model_prefix.json (sentencepiece version and settings). A model the pinned version made already is kept."""
    check_version()
    requested = dict(vocab_size=vocab_size, model_type=model_type, sample_size=sample_size, seed=seed)
    requested["inputs"] = [os.path.basename(p) for p in inputs]
    if check_existing_model(model_prefix, requested):
        return
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"sentencepiece training input {path} does not exist")
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    spm.set_random_generator_seed(seed)  # the sentence sample is drawn with it
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_prefix = os.path.join(tmp, "spm")
        spm.SentencePieceTrainer.train(
            input=",".join(inputs),
            model_prefix=tmp_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            input_sentence_size=sample_size,
            shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        settings = dict(
            sentencepiece=spm.__version__,
            vocab_size=vocab_size,
            model_type=model_type,
            sample_size=sample_size,
            seed=seed,
            inputs=[os.path.basename(p) for p in inputs],
        )
        with open(tmp_prefix + ".json", "w") as f:
            json.dump(settings, f, indent=1)
        for ext in (".json", ".vocab", ".model"):  # .model last: its presence marks the step done
            os.replace(tmp_prefix + ext, model_prefix + ext)


def encode(model, src, dst):
    """Encode lines of ``src`` into space-separated pieces in ``dst`` (atomic)."""
    sp = spm.SentencePieceProcessor(model_file=model)
    tmp = dst + ".tmp"
    with open(src, encoding="utf-8") as fin, open(tmp, "w", encoding="utf-8") as fout:
        for line in fin:
            fout.write(" ".join(sp.encode(line.strip(), out_type=str)) + "\n")
    os.replace(tmp, dst)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--input", nargs="+", required=True)
    t.add_argument("--model-prefix", required=True)
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    t.add_argument("--sample-size", type=int, default=2_000_000)
    e = sub.add_parser("encode")
    e.add_argument("--model", required=True)
    e.add_argument("--input", required=True)
    e.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    try:
        if args.cmd == "train":
            train(args.input, args.model_prefix, args.vocab_size, args.model_type, args.sample_size)
        else:
            encode(args.model, args.input, args.output)
    except (RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
