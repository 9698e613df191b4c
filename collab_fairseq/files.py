"""The package's file I/O, one writer for each job: checkpoints read with torch's safe unpickler on every supported
torch, outputs written whole (a temporary file beside them, then renamed) with the mode a plain ``open`` would
give, and a check that an output can be written, made before the work that produces it."""

import os
import tempfile
from typing import IO, Callable

import torch


class OutputError(ValueError):
    """An output path that cannot be written; the message names the path, the reason and the fix."""


def load_checkpoint_file(path: str):
    """``torch.load`` with ``weights_only=True`` whatever torch's default (it was False before torch 2.6): a
    checkpoint can hold only tensors, containers and the fairseq objects :mod:`collab_fairseq.safe_loading`
    allowlists, never code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _plain_file_mode() -> int:
    """0o666 less the umask: the mode ``open(path, "w")`` gives (tempfile's files are 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable(path: str) -> None:
    """Raise OutputError unless a file can be created at ``path`` (its directory is made if missing). Probes with a
    real temporary file, so read-only mounts, /proc and paths under a file are refused before any work."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror} ({directory}); choose another path") from None
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a directory; give a file path")


def write_atomically(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``: a reader sees the old file or
    the whole new one, never half of it. The directory is made if missing."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path) + "-")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.chmod(tmp, _plain_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomically(path: str, text: str) -> None:
    write_atomically(path, lambda f: f.write(text))


def save_checkpoint_atomically(state: dict, path: str) -> None:
    """``torch.save(state)`` to ``path`` through :func:`write_atomically`."""
    write_atomically(path, lambda f: torch.save(state, f), binary=True)
