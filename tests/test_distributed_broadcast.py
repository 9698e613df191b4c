"""Multi-GPU resume needs the other ranks to receive rank 0's checkpoint state (torch >= 2.6 safe loading).

Two CPU processes over gloo run fairseq's own broadcast_object, the call that fairseq's trainer makes when
a distributed run resumes or fine-tunes from a checkpoint.
"""

import io
import json

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf


def _state():
    cfg = OmegaConf.create({"model": {"_name": "transformer_collab", "collab_key_dim": 128}})
    return {"cfg": cfg, "model": {"w": torch.arange(4.0)}, "extra_state": {"num_updates": 473}}


def _rank(rank, init_file, out_file):
    import torch.distributed as dist
    from fairseq.distributed import utils as dist_utils

    import collab_fairseq  # noqa: F401  (what --user-dir does in every rank)

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    got = dist_utils.broadcast_object(_state() if rank == 0 else None, 0, dist.group.WORLD, torch.device("cpu"))
    if rank == 1:
        with open(out_file, "w") as f:
            json.dump({"cfg_type": type(got["cfg"]).__name__, "key_dim": got["cfg"].model.collab_key_dim,
                       "w": got["model"]["w"].tolist(), "updates": got["extra_state"]["num_updates"]}, f)  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def test_safe_loading_alone_refuses_what_rank_0_sends():
    buffer = io.BytesIO()
    torch.save(_state(), buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match="DictConfig"):
        torch.load(buffer, weights_only=True)


def test_the_other_rank_receives_the_checkpoint_state(tmp_path):
    out = tmp_path / "rank1.json"
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    assert json.loads(out.read_text()) == {"cfg_type": DictConfig.__name__, "key_dim": 128, "w": [0.0, 1.0, 2.0, 3.0],
                                           "updates": 473}  # fmt: skip
