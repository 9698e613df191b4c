"""Decoding steps replayed as CUDA graphs, one graph per attended length (``StaticCacheDecoding`` buckets).

A step launches a few hundred small kernels; launched one by one from Python the host, not the GPU, sets the pace
of beam search. Over static caches every input of a step lives in a buffer that stays put (the token, the position,
the rows to continue from, the caches), so the whole step is recorded once per length bucket and then replayed with
one launch. The first step of each bucket runs eagerly (which also warms the libraries up) and records the graph for
the next ones. Graphs of one batch share a memory pool; they never run concurrently.
"""

import logging
from typing import Dict, Optional

import torch
from torch import Tensor

from collab_fairseq.generation.static_cache import StaticCacheDecoding

logger = logging.getLogger(__name__)


class GraphedDecoding:
    """The search's decoding interface over a :class:`StaticCacheDecoding` (with buckets) on CUDA."""

    def __init__(self, decoding: StaticCacheDecoding):
        decoding.buckets = True
        self.decoding = decoding
        self.failed: Optional[str] = None

    def start(self, net_input: Dict[str, Tensor], beam: int, max_len: int) -> None:
        self.decoding.start(net_input, beam, max_len)
        rows = net_input["src_tokens"].size(0) * beam
        device = net_input["src_tokens"].device
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.rows = torch.arange(rows, device=device)
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, Tensor] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def reorder(self, rows: Tensor) -> None:
        self.rows.copy_(rows)

    def step(self, tokens: Tensor, step: int) -> Tensor:
        self.token.copy_(tokens[:, -1])
        self.position.fill_(step)
        length = self.decoding.attended_length(step)
        if step == 0 or self.failed is not None:  # nothing to reorder at the first step
            return self.decoding.step_at(self.token, self.position, length, self.rows if step else None)
        if length in self.graphs:
            self.graphs[length].replay()
            return self.outputs[length]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.decoding.step_at(self.token, self.position, length, self.rows)
        torch.cuda.current_stream().wait_stream(side)
        self._record(length)
        return out

    def _record(self, length: int) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: fairseq's data loader pins the next batch's memory in another thread meanwhile, which a
            # global capture forbids (and fails that thread)
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                self.outputs[length] = self.decoding.step_at(self.token, self.position, length, self.rows)
        except RuntimeError as err:  # an operator that cannot be captured: the steps stay eager
            self.failed = str(err).splitlines()[0]
            logger.warning("beam search: decoding steps stay eager (CUDA graph capture failed: %s)", self.failed)
            return
        self.graphs[length] = graph
