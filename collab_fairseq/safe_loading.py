"""Let torch's safe (weights_only) unpickler read fairseq checkpoints, allowing only what they hold.

Besides tensors, dicts, lists and numbers, fairseq 0.12 checkpoints hold the legacy
argparse arguments of models configured without a dataclass (``cfg.model``):
``argparse.Namespace``, or :class:`TransformerCollabArgs` for this package's models.
torch >= 2.6 refuses both unless they are allowlisted; safe loading stays on.
"""

import argparse

import torch

from collab_fairseq.needs_user_dir import TransformerCollabArgs

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace, TransformerCollabArgs]


def allow_fairseq_checkpoints() -> None:
    """Add fairseq's checkpoint objects to torch's safe-loading allowlist (idempotent)."""
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)
