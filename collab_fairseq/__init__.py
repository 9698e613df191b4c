"""collab_fairseq: collaborative multi-head attention as a fairseq user module (``--user-dir collab_fairseq``)."""

from . import models  # noqa: F401  (registers transformer_collab and its architectures)
from .attention_backends import avoid_cudnn_attention
from .safe_loading import allow_fairseq_checkpoints

# fairseq reads checkpoints with torch.load, which on torch >= 2.6 refuses the non-tensor objects
# fairseq stores; importing the user module is the only hook that runs before the load.
allow_fairseq_checkpoints()
# fairseq's batches change shape from batch to batch; cuDNN's attention builds a graph for each new one
avoid_cudnn_attention()

__version__ = "0.1.0"
