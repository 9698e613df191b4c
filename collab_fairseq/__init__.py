"""collab_fairseq: collaborative multi-head attention as a fairseq user module (``--user-dir collab_fairseq``)."""

from . import models  # noqa: F401  (registers transformer_collab and its architectures)
from .safe_loading import allow_fairseq_checkpoints

# fairseq reads checkpoints with torch.load, which on torch >= 2.6 refuses the non-tensor objects
# fairseq stores; importing the user module is the only hook that runs before the load.
allow_fairseq_checkpoints()

__version__ = "0.1.0"
