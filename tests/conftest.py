"""Shared fixtures: the tiny synthetic parallel data, binarized once per session."""

import pytest

from tests.helpers import run_cli, write_mapped_copy_task


@pytest.fixture(scope="session")
def copy_data(tmp_path_factory):
    """Binarized mapped-copy task: returns (raw_dir, bin_dir)."""
    root = tmp_path_factory.mktemp("copy")
    write_mapped_copy_task(root)
    bin_dir = root / "bin"
    run_cli(
        "preprocess",
        "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", root / "train", "--validpref", root / "valid", "--testpref", root / "test",
        "--destdir", bin_dir, "--joined-dictionary", "--workers", "1",
    )  # fmt: skip
    return root, bin_dir
