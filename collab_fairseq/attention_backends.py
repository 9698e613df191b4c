"""Keep torch's scaled_dot_product_attention off its cuDNN backend in fairseq runs.

fairseq batches sentences by length, so the attention sees a new (batch, length) shape in almost every batch of
an epoch, and on every rank of a multi-GPU run for several epochs (each epoch deals the batches out anew).
torch prefers cuDNN's attention on Hopper GPUs, and cuDNN builds an execution graph for each new shape on the
host before it runs. fairseq's own MultiheadAttention (the transformer baseline, and the generator's encoder)
calls scaled_dot_product_attention, so it paid those builds: on 4 x H100 a WMT14-recipe update of fairseq's
transformer took 283-373 ms with cuDNN's attention and 130-143 ms without it (results/multi_gpu.md). Flash
and memory-efficient attention, which torch uses instead, need no per-shape build.

Importing the user module (``--user-dir collab_fairseq``) switches cuDNN's attention off for the process;
``COLLAB_FAIRSEQ_CUDNN_ATTENTION=1`` keeps torch's choice. cuDNN's convolutions and other kernels are untouched.
"""

import logging
import os

import torch

logger = logging.getLogger(__name__)

KEEP_CUDNN_ATTENTION_ENV = "COLLAB_FAIRSEQ_CUDNN_ATTENTION"


def avoid_cudnn_attention() -> bool:
    """Disable cuDNN's scaled-dot-product attention unless the environment asks to keep it.

    Returns whether it was disabled. Raises ValueError for a value of the variable other than 0 or 1.
    """
    keep = os.environ.get(KEEP_CUDNN_ATTENTION_ENV, "0").strip()
    if keep not in ("0", "1", ""):
        raise ValueError(
            f"{KEEP_CUDNN_ATTENTION_ENV}={keep!r}: use 1 to keep torch's cuDNN attention, 0 (or unset) to switch it off"
        )
    if keep == "1":
        return False
    torch.backends.cuda.enable_cudnn_sdp(False)
    if torch.cuda.is_available():
        logger.info(
            "cuDNN scaled-dot-product attention off (it builds a graph per new batch shape); "
            f"{KEEP_CUDNN_ATTENTION_ENV}=1 keeps it"
        )
    return True
