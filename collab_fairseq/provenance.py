"""Which code produced a result: the git commit of the checkout and a hash of the collab_fairseq/ sources.

The recipes write this next to every run (``SAVE_DIR/code.json``, at the start of training), evaluate copies it
into ``bleu.json``, and make_table refuses to put rows of different collab_fairseq/ code into one table unless
asked. The code hash covers the package's own files (*.py, *.yaml), so it also tells apart an installed copy or
a checkout with uncommitted changes, where the commit alone would not.

Standard library only, so the recipes run it as a file without importing torch:

    python3 collab_fairseq/provenance.py          -> {"commit": "16b05bd...", "dirty": false, "code": "3f2a..."}
"""

import hashlib
import json
import os
import subprocess
from typing import Dict, Optional

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def code_hash(package: str = PACKAGE) -> str:
    """sha256 (first 16 hex digits) over the relative paths and contents of the package's *.py and *.yaml files."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith((".py", ".yaml"))):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, package).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()[:16]


def _git(*args) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", PACKAGE, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_provenance() -> Dict[str, object]:
    """{"commit": HEAD of the checkout holding the package (None outside git), "dirty": uncommitted changes to
    collab_fairseq/, "code": :func:`code_hash`, "cudnn_attention": what the run's COLLAB_FAIRSEQ_CUDNN_ATTENTION
    makes of torch's cuDNN attention (attention_backends.py): "off", "on" or "torch default"}."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", ".")) if commit else None
    cudnn = {"0": "off", "1": "on"}.get(os.environ.get("COLLAB_FAIRSEQ_CUDNN_ATTENTION", "").strip(), "torch default")
    return {"commit": commit, "dirty": dirty, "code": code_hash(), "cudnn_attention": cudnn}


if __name__ == "__main__":
    print(json.dumps(code_provenance()))
