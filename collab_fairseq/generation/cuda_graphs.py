"""Decoding steps replayed as CUDA graphs, one graph per attended length (``StaticCacheDecoding`` buckets).

A step launches a few hundred small kernels; launched one by one from Python the host, not the GPU, sets the pace
of beam search. Over static caches every input of a step lives in a buffer that stays put (the token, the position,
the rows to continue from, the caches), so the whole step is recorded once per length bucket and then replayed with
one launch. The first step of a batch runs eagerly (it has nothing to reorder, and warms the libraries up before
anything is recorded); each later step replays its bucket's graph, recorded when the bucket is first needed
(recording runs nothing, the replay does). A batch of the same shape as the last one (rows, output positions,
source positions rounded up to 16) writes into the same buffers and replays the same graphs. The graphs share a
memory pool; they never run concurrently.
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
        if self.decoding.start(net_input, beam, max_len):
            return  # the last batch's buffers, and so its graphs
        rows = net_input["src_tokens"].size(0) * beam
        device = net_input["src_tokens"].device
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.rows = torch.arange(rows, device=device)
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, Tensor] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()

    def reorder(self, rows: Tensor) -> None:
        self.rows.copy_(rows)

    def step(self, tokens: Tensor, step: int) -> Tensor:
        self.token.copy_(tokens[:, -1])
        self.position.fill_(step)
        length = self.decoding.attended_length(step)
        if step == 0 or self.failed is not None:  # nothing to reorder at the first step
            return self.decoding.step_at(self.token, self.position, length, self.rows if step else None)
        if length not in self.graphs and not self._record(length):
            return self.decoding.step_at(self.token, self.position, length, self.rows)
        self.graphs[length].replay()
        return self.outputs[length]

    def _record(self, length: int) -> bool:
        """Record the step of this attended length (recording runs nothing: the caller replays it); False, and the
        steps stay eager from then on, if an operator cannot be captured."""
        graph = torch.cuda.CUDAGraph()
        # recorded on a side stream (the default stream cannot be), without torch.cuda.graph's synchronize and
        # empty_cache at every recording; thread_local: fairseq's data loader pins the next batch's memory in
        # another thread meanwhile, which a global capture forbids (and fails that thread)
        self.stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(self.stream):
                graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                try:
                    self.outputs[length] = self.decoding.step_at(self.token, self.position, length, self.rows)
                finally:
                    graph.capture_end()
        except RuntimeError as err:
            self.failed = str(err).splitlines()[0]
            logger.warning("beam search: decoding steps stay eager (CUDA graph capture failed: %s)", self.failed)
            return False
        finally:
            torch.cuda.current_stream().wait_stream(self.stream)
        self.graphs[length] = graph
        return True
