"""torch's cuDNN attention, switched off for a whole run where the run asks (``COLLAB_FAIRSEQ_CUDNN_ATTENTION=0``).

fairseq batches sentences by length, so attention sees a new (batch, length) shape in almost every batch, and torch
prefers cuDNN's attention on Hopper GPUs, which builds an execution graph on the host for each new shape. fairseq's
own MultiheadAttention (the transformer baseline, and the generator's encoder) calls scaled_dot_product_attention,
so it pays those builds: on 4 x H100 a WMT14-recipe update of fairseq's transformer took 283-373 ms with cuDNN's
attention and 130-143 ms without it (results/multi_gpu/README.md).

Importing the package leaves torch's choice alone. The variable is the switch: ``0`` turns cuDNN's attention off,
``1`` on, unset leaves torch's default. fairseq imports the user module in every process it starts (each GPU's
worker, fairseq-generate), so one exported variable reaches them all; the recipes' launcher
(``recipes/lib/train.sh``) exports 0 for every run, transformer baselines included, and records it in the run's
``code.json``. cuDNN's convolutions and other kernels are untouched.
"""

import logging
import os
from typing import Optional

import torch

logger = logging.getLogger(__name__)

CUDNN_ATTENTION_ENV = "COLLAB_FAIRSEQ_CUDNN_ATTENTION"


def cudnn_attention_setting() -> Optional[bool]:
    """What the environment asks for: False (off), True (on), None (unset: torch's choice); ValueError otherwise."""
    value = os.environ.get(CUDNN_ATTENTION_ENV, "").strip()
    if value not in ("0", "1", ""):
        raise ValueError(
            f"{CUDNN_ATTENTION_ENV}={value!r}: use 0 to switch torch's cuDNN attention off, 1 to switch it on, "
            "or leave it unset for torch's choice"
        )
    return None if value == "" else value == "1"


def apply_cudnn_attention_setting() -> Optional[bool]:
    """Switch cuDNN's scaled-dot-product attention as :func:`cudnn_attention_setting` says (logged); returns it."""
    setting = cudnn_attention_setting()
    if setting is not None:
        torch.backends.cuda.enable_cudnn_sdp(setting)
        logger.info(f"cuDNN scaled-dot-product attention {'on' if setting else 'off'} ({CUDNN_ATTENTION_ENV})")
    return setting


def default_cudnn_attention(value: str) -> Optional[bool]:
    """For entry points that time things (benchmarks): ``value`` (0 or 1) unless the environment already says, in this
    process and, through the environment, in every process it starts."""
    os.environ.setdefault(CUDNN_ATTENTION_ENV, value)
    return apply_cudnn_attention_setting()
