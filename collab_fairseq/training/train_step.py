"""The training micro-batch (forward, loss, backward) over bucketed batch shapes, replayed as a CUDA graph per shape.

fairseq's micro-batch launches a few thousand kernels one by one from Python; at the batch sizes of NMT training
the host, not the GPU, sets the pace. Here each batch is padded to its bucket's shape (``buckets.py``), and on CUDA
the whole micro-batch of a shape is recorded once and then replayed with one launch:

- inputs: the padded batch is copied into the shape's static buffers;
- gradients accumulate in place into buffers that stay put: every parameter's ``.grad`` is a view of one flat buffer
  per dtype (fairseq's ``zero_grad`` sets them to None after each update; they are given back, zeroed, before the next
  micro-batch);
- loss scaling: the optimizer's ``backward`` is called on a scalar leaf, whose gradient is then the loss scale of
  that moment (fairseq's FP16Optimizer: ``loss_scale * loss``) and the rest of what ``backward`` does to the
  optimizer's state happens as in fairseq; the graph seeds its backward with a copy of that gradient, so a changed
  loss scale needs no new recording;
- dropout draws from the CUDA generator's Philox offsets, which a replay advances as the eager ops would;
- the criterion's logging tensors are copied after each replay; its counts (ntokens, nsentences, sample_size) are
  those of the unpadded batch.

A shape's first batch runs eagerly (libraries initialise, buffers that grow with the length, e.g. fairseq's future
mask, grow outside a recording), its second is recorded (recording runs nothing; the replay that follows does).
The eager batches' cached memory is given back before each recording (as torch.cuda.graph does), so that the graphs'
shared pool is not kept beside it. Anything the recording cannot take (``--amp``,
several GPUs, layer drop, activation checkpointing, a criterion other than (label-smoothed) cross-entropy, a sample
with more inputs, a capture error) runs fairseq's micro-batch instead, and the log says why, once.
"""

import atexit
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.optim.amp_optimizer import AMPOptimizer
from torch import Tensor

from collab_fairseq.models.sync_free import has_sync_free_forward
from collab_fairseq.training.buckets import Buckets, Shape, batch_shape, pad_batch

logger = logging.getLogger(__name__)

CRITERIA = (LabelSmoothedCrossEntropyCriterion, CrossEntropyCriterion)
NET_INPUT = {"src_tokens", "src_lengths", "prev_output_tokens"}
TORCH_DIR = os.path.dirname(torch.__file__)


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    sample: dict  # static inputs
    loss: Tensor
    logging: dict  # the criterion's logging output as recorded (its tensors are static outputs)


@dataclass
class BucketedTrainStep:
    """``(sample, model, criterion, optimizer, ignore_grad) -> (loss, sample_size, logging_output)`` or None where
    fairseq's step must run (the caller runs it). ``graphs``: record CUDA graphs (else: padded eager micro-batches,
    the same math, e.g. on the CPU)."""

    buckets: Buckets
    pad: int
    eos: int
    left_pad_source: bool
    graphs: bool
    recorded: Dict[Shape, _Graph] = field(default_factory=dict)
    seen: Set[Shape] = field(default_factory=set)
    eager_steps: int = 0
    replays: int = 0
    said: set = field(default_factory=set)
    failed: Optional[str] = None
    _run_checked: Optional[tuple] = None
    _run_reason: Optional[str] = None
    # made on first use: the gradient buffers (flat per dtype, a view per parameter), the loss-scale seed a recorded
    # backward starts from and the leaf that measures it, the recording stream and pool, the future mask recorded
    _flat: Dict[torch.dtype, Tensor] = field(default_factory=dict, repr=False)
    _views: List[Tensor] = field(default_factory=list, repr=False)
    _params: List[Tensor] = field(default_factory=list, repr=False)
    seed: Optional[Tensor] = field(default=None, repr=False)
    _leaf: Optional[Tensor] = field(default=None, repr=False)
    _stream: Optional["torch.cuda.Stream"] = field(default=None, repr=False)
    _pool: Optional[tuple] = field(default=None, repr=False)
    _future_mask: Optional[Tensor] = field(default=None, repr=False)

    def __call__(self, sample, model, criterion, optimizer, ignore_grad: bool):
        reason = self.unsupported(sample, model, criterion, optimizer)
        if reason is not None:
            self._say(f"training step: fairseq's micro-batch ({reason})")
            return None
        rows, source, target = batch_shape(sample)
        shape = self.buckets.shape(rows, source, target)
        if self.graphs and self.failed is None and not self.recorded and (reason := graph_unsupported(model)):
            self.failed = reason
            logger.warning("training step: padded eager micro-batches (no CUDA graphs: %s)", reason)
        graphed = self.graphs and self.failed is None and not ignore_grad and rows <= self.buckets.rows(max(shape[1:]))
        if self.recorded and future_mask_of(model) is not self._future_mask:
            logger.warning("training step: the decoder's future mask was made anew; recording the shapes again")
            self.release()
        recorded = self.recorded.get(shape)
        if not graphed or (recorded is None and shape not in self.seen):
            self.seen.add(shape)  # a shape's first batch runs eagerly: what grows lazily grows outside a recording
            self.eager_steps += 1
            return self._eager(sample, shape, model, criterion, optimizer, ignore_grad)
        self._keep_gradients_in_place(model)
        seed = self._loss_scale(optimizer)
        if recorded is None:
            recorded = self._record(sample, shape, model, criterion)
            if recorded is None:
                return self._eager(sample, shape, model, criterion, optimizer, ignore_grad)
        pad_batch(sample, shape, self.pad, self.eos, self.left_pad_source, out=recorded.sample)
        self.seed.copy_(seed)
        recorded.graph.replay()
        self.replays += 1
        logging_output = {k: v.clone() if torch.is_tensor(v) else v for k, v in recorded.logging.items()}
        return recorded.loss.clone(), *self._counts(sample, criterion, logging_output)

    def unsupported(self, sample, model, criterion, optimizer) -> Optional[str]:
        """Why this micro-batch cannot be bucketed, or None. What holds for the whole run (criterion, optimizer,
        world size, model options) is checked once per (model, criterion, optimizer)."""
        if not sample or "net_input" not in sample or set(sample["net_input"]) != NET_INPUT:
            return "a sample with other inputs than src_tokens, src_lengths, prev_output_tokens"
        run = (id(model), id(criterion), id(optimizer))
        if self._run_checked != run:
            self._run_reason, self._run_checked = run_unsupported(model, criterion, optimizer), run
        return self._run_reason

    def _eager(self, sample, shape, model, criterion, optimizer, ignore_grad):
        padded = pad_batch(sample, shape, self.pad, self.eos, self.left_pad_source)
        loss, _, logging_output = criterion(model, padded)
        if ignore_grad:
            loss *= 0
        optimizer.backward(loss)
        # detached: a caller that keeps the loss would keep its graph's leaf nodes, which remember the stream of this
        # eager backward, and a later recording's backward would then wait on that stream (a capture error)
        return loss.detach(), *self._counts(sample, criterion, logging_output)

    @staticmethod
    def _counts(sample, criterion, logging_output) -> Tuple[int, dict]:
        """sample_size and the logging output with the unpadded batch's counts (what the criterion reports)."""
        nsentences = sample["target"].size(0)
        sample_size = nsentences if criterion.sentence_avg else sample["ntokens"]
        logging_output.update(ntokens=sample["ntokens"], nsentences=nsentences, sample_size=sample_size)
        return sample_size, logging_output

    def _keep_gradients_in_place(self, model) -> None:
        """Every parameter's .grad a view of a flat buffer that stays put (what a recorded backward adds into)."""
        params: List[Tensor] = [p for p in model.parameters() if p.requires_grad]
        if len(self._views) != len(params):
            flat = {}
            for p in params:
                flat[p.dtype] = flat.get(p.dtype, 0) + p.numel()
            self._flat = {dtype: torch.zeros(n, dtype=dtype, device=params[0].device) for dtype, n in flat.items()}
            offsets, self._views = dict.fromkeys(flat, 0), []
            for p in params:
                start = offsets[p.dtype]
                self._views.append(self._flat[p.dtype][start : start + p.numel()].view_as(p))
                offsets[p.dtype] = start + p.numel()
            self._params = params
        if all(p.grad is v for p, v in zip(self._params, self._views)):
            return
        for buffer in self._flat.values():
            buffer.zero_()
        for p, view in zip(self._params, self._views):
            if p.grad is not None:
                view.copy_(p.grad)  # an eager micro-batch of this update came first
            p.grad = view

    def _loss_scale(self, optimizer) -> Tensor:
        """d(optimizer.backward's loss)/d(loss): the optimizer's backward run on a scalar leaf."""
        if self.seed is None:
            device = self._params[0].device
            self.seed = torch.ones((), device=device)
            self._leaf = torch.zeros((), device=device, requires_grad=True)
        self._leaf.grad = None
        optimizer.backward(self._leaf)
        return self._leaf.grad

    def _record(self, sample, shape, model, criterion) -> Optional[_Graph]:
        """The micro-batch of this shape recorded (not run), or None (and eager steps from now on) if capture fails."""
        static = pad_batch(sample, shape, self.pad, self.eos, self.left_pad_source)
        if self._stream is None:
            self._stream, self._pool = torch.cuda.Stream(), torch.cuda.graph_pool_handle()
        if not self.recorded:
            grow_future_mask(model, static["net_input"]["src_tokens"].device, next(model.parameters()).dtype)
            self._future_mask = future_mask_of(model)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.empty_cache()
        self._stream.wait_stream(torch.cuda.current_stream())
        error = None
        try:
            with torch.cuda.stream(self._stream):
                # thread_local: fairseq's data loader pins the next batch in another thread meanwhile
                graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                try:
                    loss, _, logging_output = criterion(model, static)
                    torch.autograd.backward(loss, grad_tensors=self.seed.to(loss.dtype))
                except RuntimeError as err:
                    error = err  # what broke the capture; ending it then only says "a previous error"
                finally:
                    try:
                        graph.capture_end()
                    except RuntimeError as err:
                        error = error or err
        finally:
            torch.cuda.current_stream().wait_stream(self._stream)
        if error is not None:
            self.failed = f"{str(error).splitlines()[0]} (at {outside_torch(error)})"
            logger.warning(
                "training step: eager micro-batches from now on (CUDA graph capture failed: %s)", self.failed
            )
            return None
        if not self.recorded:
            atexit.register(self.release)
        self.recorded[shape] = _Graph(graph, static, loss.detach(), logging_output)
        logger.info("training step: recorded the micro-batch of shape %s (%d shapes)", shape, len(self.recorded))
        return self.recorded[shape]

    def release(self) -> None:
        """Free the graphs and what their pool holds, outputs first (at exit, tensors of a graph's pool freed after
        the interpreter has torn the allocator down crash the process)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        for recorded in self.recorded.values():
            recorded.loss, recorded.logging, recorded.sample = None, {}, {}
        for recorded in self.recorded.values():
            recorded.graph.reset()
        self.recorded.clear()

    def _say(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            logger.info(message)


def grow_future_mask(model, device, dtype) -> None:
    """Make fairseq's decoder future mask as long as the decoder's positions now. fairseq makes it anew, and frees
    the old one, when a longer batch comes; a recorded graph that reads the old one would read freed memory."""
    decoder = getattr(model, "decoder", None)
    if decoder is not None and hasattr(decoder, "buffered_future_mask") and hasattr(decoder, "max_positions"):
        decoder.buffered_future_mask(torch.empty(decoder.max_positions(), 1, device=device, dtype=dtype))


def future_mask_of(model):
    return getattr(getattr(model, "decoder", None), "_future_mask", None)


def outside_torch(error: BaseException) -> str:
    """file:line of the innermost frame of ``error``'s traceback outside torch: the code that broke a capture."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(TORCH_DIR)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def graph_unsupported(model) -> Optional[str]:
    """Why the micro-batch of ``model`` cannot be recorded, or None: a fairseq transformer whose encoder or decoder
    still branch on GPU values (a host read, which a recording cannot hold)."""
    if has_sync_free_forward(model) is False:
        return (
            "the model's encoder or decoder reads GPU values on the host; give it the sync-free forward "
            "(collab_fairseq.models.sync_free.make_sync_free, as --task translation_fast's build_model does)"
        )
    return None


def run_unsupported(model, criterion, optimizer) -> Optional[str]:
    """Why no micro-batch of this run can be bucketed, or None."""
    if not isinstance(criterion, CRITERIA):
        return f"criterion {type(criterion).__name__}; bucketed steps take cross_entropy and " \
               "label_smoothed_cross_entropy"  # fmt: skip
    if isinstance(optimizer, AMPOptimizer):
        return "--amp"
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return "several GPUs"
    cfg = getattr(model, "cfg", None) or getattr(model, "args", None)
    if getattr(cfg, "encoder_layerdrop", 0) or getattr(cfg, "decoder_layerdrop", 0):
        return "layer drop"
    if getattr(cfg, "checkpoint_activations", False):
        return "--checkpoint-activations"
    return None
