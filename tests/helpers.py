"""Helpers for the CLI tests: a fairseq_cli runner, tiny synthetic data, BLEU parsing."""

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


def run_cli(module, *args, stdin=None, check=True):
    """Run ``python -m fairseq_cli.<module> ARGS``; return the CompletedProcess (stdout+stderr in .stdout)."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
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


def parse_bleu(generate_output: str) -> float:
    """BLEU from fairseq-generate's last line 'Generate test with beam=4: BLEU4 = 99.83, ...'."""
    for line in reversed(generate_output.splitlines()):
        if "BLEU4 = " in line:
            return float(line.split("BLEU4 = ")[1].split(",")[0])
    raise AssertionError("no BLEU line in fairseq-generate output:\n" + generate_output[-2000:])
