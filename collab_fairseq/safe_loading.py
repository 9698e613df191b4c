"""Let torch's safe (weights_only) unpickler read fairseq checkpoints, allowing only what they hold.

Besides tensors, dicts, lists and numbers, fairseq 0.12 checkpoints hold the legacy
argparse arguments of models configured without a dataclass (``cfg.model``):
``argparse.Namespace``, or :class:`TransformerCollabArgs` for this package's models.
In multi-GPU runs that start from a checkpoint (resume, ``--finetune-from-model``) rank 0 loads it
with ``checkpoint_utils.load_checkpoint_to_cpu``, which turns ``cfg`` into an omegaconf ``DictConfig``,
and broadcasts that state to the other ranks as ``torch.save`` bytes (its tensors sent apart, replaced by
fairseq's ``_TensorPlaceholder``) that they ``torch.load``: those and the omegaconf containers below are
what that state holds besides the above.
torch >= 2.6 refuses all of these unless they are allowlisted; safe loading stays on.
"""

import argparse
import collections
import typing

import torch
from fairseq.distributed.utils import _TensorPlaceholder
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

from collab_fairseq.needs_user_dir import TransformerCollabArgs

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace, TransformerCollabArgs]
# torch.serialization.get_unsafe_globals_in_checkpoint of what broadcast_object sends of a load_checkpoint_to_cpu
# state (transformer and collab checkpoints)
FAIRSEQ_RANK_BROADCAST_GLOBALS = [
    _TensorPlaceholder,
    DictConfig,
    ListConfig,
    ContainerMetadata,
    Metadata,
    AnyNode,
    typing.Any,
    dict,
    list,
    int,
    collections.defaultdict,
]


def allow_fairseq_checkpoints() -> None:
    """Add fairseq's checkpoint objects to torch's safe-loading allowlist (idempotent)."""
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS + FAIRSEQ_RANK_BROADCAST_GLOBALS)
