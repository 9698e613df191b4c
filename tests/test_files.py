"""The package's file I/O: safe checkpoint loading on every torch, whole-file writes with a plain file's mode."""

import os
import pickle

import pytest
import torch

from collab_fairseq.cli import analyze, average_checkpoints, make_table
from collab_fairseq.files import OutputError, check_writable, write_text_atomically
from collab_fairseq.reparam.convert_checkpoint import CheckpointError, load_checkpoint
from tests.helpers import REPO


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_every_checkpoint_read_asks_for_safe_loading_whatever_torch_defaults_to(
    transformer_checkpoint, tmp_path, monkeypatch, capsys
):
    """torch < 2.6 defaults to weights_only=False: the package's own reads must ask for True themselves."""
    calls, real_load = [], torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    load_checkpoint(str(transformer_checkpoint))
    average_checkpoints.average([str(transformer_checkpoint)] * 2)
    assert make_table.attention_params(str(transformer_checkpoint)) > 0
    assert analyze.main([str(transformer_checkpoint)]) == 0
    assert len(calls) >= 5 and all(c is True for c in calls), calls
    sources = [p for p in (REPO / "collab_fairseq").rglob("*.py") if "torch.load(" in p.read_text()]
    assert [p.name for p in sources] == ["files.py"]


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": _Payload(str(marker))}, f)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_whole_file_writes_keep_a_plain_files_mode_and_leave_no_temporary_file(tmp_path):
    umask = os.umask(0o027)
    try:
        write_text_atomically(str(tmp_path / "sub" / "a.txt"), "text")
    finally:
        os.umask(umask)
    assert (tmp_path / "sub" / "a.txt").read_text() == "text"
    assert (tmp_path / "sub" / "a.txt").stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path / "sub") == ["a.txt"]
    with pytest.raises(OutputError, match="cannot write .* choose another path"):
        check_writable(str(tmp_path / "sub" / "a.txt" / "b.txt"))
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(str(tmp_path / "sub"))
