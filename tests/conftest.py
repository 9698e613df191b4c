"""Shared fixtures, built once per test session: the tiny synthetic parallel data and the trained tiny models
the CLI, recipe and re-parametrization tests read."""

import os

import pytest

# the fused attention kernel (Triton) runs on CPU tensors under Triton's interpreter; must be set before the
# kernel module is imported (the layer imports it on first use)
os.environ.setdefault("TRITON_INTERPRET", "1")
import torch  # noqa: E402

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # pytest -n N: each worker and the CLIs it starts get 1/N of the cores
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # not on macOS
    _threads = max(1, (_cores or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

from tests.helpers import (  # noqa: E402  (after the environment above)
    TINY_MODEL,
    TRAIN_FLAGS,
    USER_DIR,
    fairseq_preprocess,
    fairseq_train,
    write_mapped_copy_task,
)

COLLAB_RUN_UPDATES = 220


@pytest.fixture(scope="session")
def copy_data(tmp_path_factory):
    """Binarized mapped-copy task: returns (raw_dir, bin_dir)."""
    root = tmp_path_factory.mktemp("copy")
    write_mapped_copy_task(root)
    bin_dir = root / "bin"
    fairseq_preprocess(
        "--source-lang",
        "src",
        "--target-lang",
        "tgt",
        "--trainpref",
        root / "train",
        "--validpref",
        root / "valid",
        "--testpref",
        root / "test",
        "--destdir",
        bin_dir,
        "--joined-dictionary",
        "--workers",
        "1",
    )
    return root, bin_dir


@pytest.fixture(scope="session")
def collab_run(copy_data, tmp_path_factory):
    """A tiny transformer_collab (D_k=16, 4 heads of 64 dims) that has learned the mapped-copy task: its run
    directory, with checkpoint_best/last.pt, update checkpoints at 100 and 200, and train.log."""
    _, bin_dir = copy_data
    run = tmp_path_factory.mktemp("collab_run")
    log = fairseq_train(
        bin_dir,
        "--user-dir",
        USER_DIR,
        "--save-dir",
        run,
        "--arch",
        "transformer_collab",
        "--collab-key-dim",
        "16",
        *TINY_MODEL,
        *TRAIN_FLAGS,
        "--max-update",
        COLLAB_RUN_UPDATES,
        "--save-interval-updates",
        "100",
    )
    (run / "train.log").write_text(log)
    return run


@pytest.fixture(scope="session")
def transformer_checkpoint(copy_data, tmp_path_factory):
    """fairseq's own transformer (4 heads of d_k=16, 64 dims), trained a little on the mapped-copy task."""
    _, bin_dir = copy_data
    run = tmp_path_factory.mktemp("transformer")
    fairseq_train(
        bin_dir,
        "--arch",
        "transformer_iwslt_de_en",
        "--save-dir",
        run,
        *TINY_MODEL,
        *TRAIN_FLAGS,
        "--max-update",
        "30",
        "--share-all-embeddings",
    )
    return run / "checkpoint_last.pt"
