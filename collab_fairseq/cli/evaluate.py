"""Translate a binarized test set with fairseq-generate and score it with sacreBLEU; write one JSON per run.

    python -m collab_fairseq.cli.evaluate --data BIN --checkpoint ckpt.pt --reference raw/test.de \
        --out run/bleu.json [--beam 5 --lenpen 1.0 --subset test --spm] [--tokenized-bleu] [--generator auto]

The beam search is this package's on CUDA (``--task translation_fast``; ``--generator fairseq`` for fairseq's).
Hypotheses are detokenized (sentencepiece pieces joined) and put back in corpus order, then scored
against the raw reference with sacreBLEU (its signature goes into the JSON). ``--tokenized-bleu`` adds
the number WMT14 En-De papers report: BLEU on Moses-tokenized text with compound splitting
("Vorlage-@##@-Modell"), computed by sacreBLEU with tokenize=none on pre-tokenized text.
"""

import argparse
import json
import logging
import os
import re
import shlex
import subprocess
import sys

import sacrebleu

from collab_fairseq.files import write_text_atomically
from collab_fairseq.provenance import code_provenance
from collab_fairseq.tasks.translation_fast import GENERATORS

logger = logging.getLogger(__name__)


def run_generate(
    data, checkpoint, subset, beam, lenpen, batch_size, user_dir, extra=(), remove_bpe="sentencepiece", shards=1
):
    """fairseq-generate -> detokenized hypotheses (``remove_bpe``: fairseq's post-process), in corpus order.

    With ``shards`` > 1 the test set is split with fairseq's --num-shards/--shard-id and the shards are
    translated in parallel, shard i on the i-th visible GPU; hypotheses are merged back by sentence id.
    """
    cmd = [
        sys.executable,
        "-m",
        "fairseq_cli.generate",
        data,
        "--user-dir",
        user_dir,
        "--path",
        checkpoint,
        "--gen-subset",
        subset,
        "--beam",
        str(beam),
        "--lenpen",
        str(lenpen),
        "--batch-size",
        str(batch_size),
        "--remove-bpe",
        remove_bpe,
        *extra,
        # fairseq-fixed 0.12.3.1 silently drops the last batch when it is not a multiple of this (default 8)
        "--required-batch-size-multiple",
        "1",
    ]
    devices = _visible_devices()
    procs = []
    for shard in range(shards):
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[shard % len(devices)]
        shard_cmd = cmd + (["--num-shards", str(shards), "--shard-id", str(shard)] if shards > 1 else [])
        procs.append(subprocess.Popen(shard_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    hyps = {}
    for shard, proc in enumerate(procs):
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"fairseq-generate (shard {shard}) failed:\n{err[-3000:]}")
        for line in out.splitlines():
            if line.startswith("D-"):  # D-<id>\t<score>\t<detokenized hypothesis>
                idx, _, text = line.split("\t", 2)
                hyps[int(idx[2:])] = text
    return [hyps[i] for i in sorted(hyps)]


def _visible_devices():
    """CUDA device ids this process may use ([] without GPUs)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except ImportError:
        count = 0
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[:count] if visible else [str(i) for i in range(count)]


def compound_split_tokenize(lines, lang):
    """Moses tokenization (sacremoses if present, else sacreBLEU's 13a) + compound splitting, as fairseq's script."""
    try:
        from sacremoses import MosesTokenizer

        tok = MosesTokenizer(lang=lang)
        toks = [tok.tokenize(line, return_str=True, escape=False) for line in lines]
    except ImportError:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

        tok = Tokenizer13a()
        toks = [tok(line) for line in lines]
    return [re.sub(r"(\S)-(\S)", r"\1 ##AT##-##AT## \2", t) for t in toks]


def score(hyps, refs, target_lang="de", tokenized=False):
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: is --reference the raw test target?")
    bleu = sacrebleu.metrics.BLEU()
    result = bleu.corpus_score(hyps, [refs])
    out = {"sacrebleu": round(result.score, 2), "signature": str(bleu.get_signature()), "sentences": len(hyps)}
    if tokenized:
        tok_bleu = sacrebleu.metrics.BLEU(tokenize="none")
        out["tokenized_bleu_compound_split"] = round(
            tok_bleu.corpus_score(
                compound_split_tokenize(hyps, target_lang), [compound_split_tokenize(refs, target_lang)]
            ).score,
            2,
        )
    return out


def trained_by(checkpoint: str) -> dict:
    """The code that trained ``checkpoint``: the code.json the recipe wrote beside it at the start of training
    (commit, dirty, code), else this checkout's, marked as read at evaluation time."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "code.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {**code_provenance(), "code_read_at": "evaluation"}


def generator_flags(generator: str):
    """fairseq-generate's flags for the beam search ``generator`` (GENERATORS)."""
    return [] if generator == "fairseq" else ["--task", "translation_fast", "--generator", generator]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="fairseq binarized data directory")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--reference", required=True, help="raw (detokenized) reference file, one line per sentence")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--target-lang", default="de")
    parser.add_argument("--tokenized-bleu", action="store_true", help="also report tokenized, compound-split BLEU")
    parser.add_argument("--hypotheses", help="also write the detokenized hypotheses here")
    parser.add_argument(
        "--remove-bpe", default="sentencepiece", help="fairseq post-process of the pieces ('none': keep)"
    )
    parser.add_argument("--shards", type=int, default=0, help="parallel fairseq-generate shards (default: one per GPU)")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="auto",
        help="beam search (--task translation_fast --generator X): auto, this package's on CUDA and fairseq's on "
        "the CPU; static, this package's; fairseq, fairseq's SequenceGenerator (--task translation)",
    )
    parser.add_argument("--generate-args", default="", help="more fairseq-generate flags, e.g. '--max-len-b 50'")
    parser.add_argument("--meta", default="{}", help="JSON object merged into the output (run name, D_k, seed...)")
    args = parser.parse_args(argv)
    for path, what in [(args.checkpoint, "checkpoint"), (args.reference, "reference"), (args.data, "data")]:
        if not os.path.exists(path):
            parser.error(f"{what} {path} does not exist")
    user_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(args.reference, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    shards = args.shards if args.shards else max(len(_visible_devices()), 1)
    hyps = run_generate(
        args.data,
        args.checkpoint,
        args.subset,
        args.beam,
        args.lenpen,
        args.batch_size,
        user_dir,
        generator_flags(args.generator) + shlex.split(args.generate_args),
        args.remove_bpe,
        shards,
    )
    result = {
        **json.loads(args.meta),
        **trained_by(args.checkpoint),
        "checkpoint": args.checkpoint,
        "subset": args.subset,
        "beam": args.beam,
        "lenpen": args.lenpen,
        "shards": shards,
        "generator": args.generator,
        **score(hyps, refs, args.target_lang, args.tokenized_bleu),
    }
    if args.hypotheses:
        write_text_atomically(args.hypotheses, "".join(h + "\n" for h in hyps))
    write_text_atomically(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
