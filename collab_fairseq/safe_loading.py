"""Let torch's safe (weights_only) unpickler read fairseq checkpoints, allowing only what they hold.

Besides tensors, dicts, lists and numbers, fairseq 0.12 checkpoints hold the legacy
argparse arguments of models configured without a dataclass (``cfg.model``):
``argparse.Namespace``, or :class:`TransformerCollabArgs` for this package's models.
torch >= 2.6 refuses both unless they are allowlisted; safe loading stays on.
"""

import argparse
import io

import torch

from collab_fairseq.needs_user_dir import TransformerCollabArgs

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace, TransformerCollabArgs]


def allow_fairseq_checkpoints() -> None:
    """Add fairseq's checkpoint objects to torch's safe-loading allowlist (idempotent)."""
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)


def allow_fairseq_rank_broadcast() -> None:
    """Let fairseq's other ranks receive the checkpoint state that rank 0 broadcasts (torch >= 2.6).

    When distributed training resumes or fine-tunes, rank 0 loads the checkpoint file (safely, above) and
    sends the state, whose config is an omegaconf DictConfig by then, to the other ranks as torch.save bytes
    over the process group; fairseq's receiving torch.load then refuses DictConfig under weights_only=True
    and every resumed multi-GPU run dies. Those bytes are what rank 0 of the same job just produced from an
    already safely loaded checkpoint, not a file, so only this in-job receive unpickles fully (idempotent).
    """
    from fairseq.distributed import utils as dist_utils

    original = dist_utils._broadcast_object_slow
    if getattr(original, "receives_rank0_objects", False):
        return

    def _broadcast_object_slow(obj, src_rank, group, dist_device):
        if dist_utils.get_rank(group) == src_rank:
            return original(obj, src_rank, group, dist_device)
        length = torch.LongTensor([0]).to(dist_device)
        dist_utils.broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        dist_utils.broadcast(buffer, src=src_rank, group=group)
        return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

    _broadcast_object_slow.receives_rank0_objects = True
    _broadcast_object_slow.__wrapped__ = original
    dist_utils._broadcast_object_slow = _broadcast_object_slow
