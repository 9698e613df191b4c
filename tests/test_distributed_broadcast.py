"""Multi-GPU resume needs the other ranks to receive rank 0's checkpoint state (torch >= 2.6 safe loading).

fairseq's trainer loads the checkpoint on rank 0 with load_checkpoint_to_cpu (its cfg becomes an omegaconf
DictConfig) and sends it with broadcast_object; here two CPU processes over gloo run that same call on the
state of a real checkpoint of a tiny collaborative model.
"""

import io
import json

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig

from tests.conftest import COLLAB_RUN_UPDATES


@pytest.fixture(scope="module")
def checkpoint(collab_run):
    return collab_run / "checkpoint_last.pt"


def _state(path):
    from fairseq import checkpoint_utils

    import collab_fairseq  # noqa: F401  (what --user-dir does in every rank)

    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


def _rank(rank, init_file, path, out_file):
    import torch.distributed as dist
    from fairseq.distributed import utils as dist_utils

    import collab_fairseq  # noqa: F401  (what --user-dir does in every rank)

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    got = dist_utils.broadcast_object(_state(path) if rank == 0 else None, 0, dist.group.WORLD, torch.device("cpu"))
    if rank == 1:
        with open(out_file, "w") as f:
            json.dump(
                {
                    "cfg_type": type(got["cfg"]).__name__,
                    "key_dim": got["cfg"].model.collab_key_dim,
                    "w": got["model"]["encoder.embed_tokens.weight"][:2, :3].tolist(),
                    "updates": got["optimizer_history"][-1]["num_updates"],
                },
                f,
            )
    dist.barrier()
    dist.destroy_process_group()


def test_safe_loading_alone_refuses_what_rank_0_sends(checkpoint):
    buffer = io.BytesIO()
    torch.save(_state(checkpoint), buffer)
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # torch's own allowlist, without collab_fairseq's additions
    try:
        buffer.seek(0)
        with pytest.raises(Exception, match="DictConfig"):
            torch.load(buffer, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(allowed)


def test_the_other_rank_receives_the_checkpoint_state(checkpoint, tmp_path):
    out = tmp_path / "rank1.json"
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(checkpoint), str(out)), nprocs=2, join=True)
    expected = _state(checkpoint)
    assert json.loads(out.read_text()) == {
        "cfg_type": DictConfig.__name__,
        "key_dim": 16,
        "w": expected["model"]["encoder.embed_tokens.weight"][:2, :3].tolist(),
        "updates": COLLAB_RUN_UPDATES,
    }
