"""Helpers for the tests: fairseq's CLIs run in this process (as fairseq's own tests run them), a subprocess
runner for the few checks that need a fresh Python, tiny synthetic data, BLEU parsing."""

import argparse
import contextlib
import difflib
import io
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import collab_fairseq

USER_DIR = os.path.dirname(os.path.abspath(collab_fairseq.__file__))
REPO = Path(USER_DIR).parent
SHARED_DATA = REPO.parent / "shared" / "data"

# A tiny transformer that trains in seconds on 2 CPU cores.
TINY_MODEL = (
    "--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64 "
    "--encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 "
    "--encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.0"
).split()
TRAIN_FLAGS = (
    "--optimizer adam --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 50 --max-tokens 4000 "
    "--criterion label_smoothed_cross_entropy --label-smoothing 0.1 --seed 1 --num-workers 0 "
    "--no-epoch-checkpoints --log-format simple --log-interval 10 --no-progress-bar"
).split()


@contextlib.contextmanager
def captured_logs():
    """Everything fairseq logs meanwhile, as text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s | %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def fairseq_train(*argv) -> str:
    """``fairseq-train ARGV`` in this process; returns what it logged."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    args = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in argv])
    with captured_logs() as log:
        train.main(convert_namespace_to_omegaconf(args))
    return log.getvalue()


def fairseq_generate(*argv) -> str:
    """``fairseq-generate ARGV`` in this process; returns its output (hypotheses and the BLEU line)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import generate

    args = options.parse_args_and_arch(options.get_generation_parser(), [str(a) for a in argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        generate.main(convert_namespace_to_omegaconf(args))
    return out.getvalue()


def fairseq_interactive(*argv, stdin: str) -> str:
    """``fairseq-interactive ARGV < stdin`` in this process; returns its output."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import interactive

    args = options.parse_args_and_arch(options.get_interactive_generation_parser(), [str(a) for a in argv])
    out, old_stdin = io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            interactive.main(convert_namespace_to_omegaconf(args))
    finally:
        sys.stdin = old_stdin
    return out.getvalue()


def fairseq_preprocess(*argv) -> None:
    from fairseq import options
    from fairseq_cli import preprocess

    with captured_logs():
        preprocess.main(options.get_preprocessing_parser().parse_args([str(a) for a in argv]))


def run_cli(module, *args, stdin=None, check=True):
    """``python -m fairseq_cli.MODULE ARGS`` in a fresh process; the CompletedProcess, stdout and stderr together
    in .stdout."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", f"fairseq_cli.{module}", *map(str, args)],
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fairseq_cli.{module} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def load_model(checkpoint, bin_dir):
    """The checkpoint's model (its saved arguments, a translation task on bin_dir), float32, eval mode."""
    from fairseq import checkpoint_utils, tasks

    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    args = state["cfg"]["model"]
    task = tasks.setup_task(argparse.Namespace(**{**vars(args), "data": str(bin_dir), "task": "translation"}))
    model = task.build_model(args)
    model.load_state_dict(state["model"], strict=True)
    return model.float().eval()


def write_mapped_copy_task(out_dir: Path, seed: int = 0):
    """Source: random words w0..w39; target: the same words upper-cased (a task BLEU can grade in seconds)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)]
    for split, n in [("train", 3000), ("valid", 100), ("test", 100)]:
        with open(out_dir / f"{split}.src", "w") as src, open(out_dir / f"{split}.tgt", "w") as tgt:
            for _ in range(n):
                words = [rng.choice(vocab) for _ in range(rng.randint(3, 10))]
                src.write(" ".join(words) + "\n")
                tgt.write(" ".join(w.upper() for w in words) + "\n")


def assert_mostly_copies(translations, copies, at_least=0.7):
    """Each translation of the mapped-copy task has at least ``at_least`` of its copy's words in order
    (difflib's ratio): the tiny test models repeat or drop a last word depending on the float rounding of the
    machine's thread count, so exact copies would test the machine rather than the code."""
    assert len(translations) == len(copies)
    for translation, copy in zip(translations, copies):
        assert difflib.SequenceMatcher(None, translation.split(), copy.split()).ratio() >= at_least, (translation, copy)


def parse_bleu(generate_output: str) -> float:
    """BLEU from fairseq-generate's last line 'Generate test with beam=4: BLEU4 = 99.83, ...'."""
    for line in reversed(generate_output.splitlines()):
        if "BLEU4 = " in line:
            return float(line.split("BLEU4 = ")[1].split(",")[0])
    raise AssertionError("no BLEU line in fairseq-generate output:\n" + generate_output[-2000:])
