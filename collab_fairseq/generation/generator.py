"""``StaticBeamGenerator``: fairseq's SequenceGenerator, searching over a batch that keeps its size.

It takes SequenceGenerator's arguments (``task.build_generator(..., seq_gen_cls=StaticBeamGenerator)``, which the
``translation_fast`` task does) and returns its output. Where the fixed-batch search does not implement an option,
fairseq's own ``_generate`` runs, and the generator says why, once.
"""

import logging
from typing import Dict, List, Optional

from fairseq import search
from fairseq.sequence_generator import SequenceGenerator
from torch import Tensor

from collab_fairseq.generation.beam_search import FixedBatchBeamSearch
from collab_fairseq.generation.cuda_graphs import GraphedDecoding
from collab_fairseq.generation.incremental import IncrementalDecoding
from collab_fairseq.generation.static_cache import StaticCacheDecoding, unsupported_decoder

logger = logging.getLogger(__name__)

USES = ("auto", "always")  # auto: the fixed-batch search on CUDA, fairseq's elsewhere


class StaticBeamGenerator(SequenceGenerator):
    """SequenceGenerator whose beam search keeps the batch x beam fixed and syncs with the host every
    ``check_every`` steps (collab_fairseq/generation/beam_search.py). ``use``: "auto" (CUDA inputs only) or
    "always". ``static_cache``: decode over caches allocated once per batch (static_cache.py) where the model's
    layers allow; ``cuda_graphs``: replay those steps as CUDA graphs on CUDA (cuda_graphs.py)."""

    def __init__(
        self,
        models,
        tgt_dict,
        use: str = "auto",
        check_every: int = 8,
        static_cache: bool = True,
        cuda_graphs: bool = True,
        **kwargs,
    ):
        super().__init__(models, tgt_dict, **kwargs)
        if use not in USES:
            raise ValueError(f"unknown use {use!r} of the fixed-batch beam search; choose one of {', '.join(USES)}")
        self.use = use
        self.static_cache, self.cuda_graphs = static_cache, cuda_graphs
        self.unsupported = unsupported_options(self, kwargs)
        self.fixed_batch = FixedBatchBeamSearch(
            tgt_dict,
            beam_size=self.beam_size,
            max_len_a=self.max_len_a,
            max_len_b=self.max_len_b,
            max_len=self.max_len,
            min_len=self.min_len,
            normalize_scores=self.normalize_scores,
            len_penalty=self.len_penalty,
            unk_penalty=self.unk_penalty,
            check_every=check_every,
        )
        self._told = set()
        self._static = None

    def _generate(
        self,
        sample: Dict[str, Dict[str, Tensor]],
        prefix_tokens: Optional[Tensor] = None,
        constraints: Optional[Tensor] = None,
        bos_token: Optional[int] = None,
    ) -> List[List[Dict[str, Tensor]]]:
        reason = self._reason_for_fairseq(sample, constraints)
        self._say(reason)
        if reason is not None:
            return super()._generate(sample, prefix_tokens, constraints, bos_token)
        decoding = self._decoding(sample["net_input"]["src_tokens"].is_cuda)
        hypotheses = self.fixed_batch.search(decoding, sample["net_input"], prefix_tokens, bos_token)
        static = getattr(decoding, "decoding", decoding)
        if isinstance(static, StaticCacheDecoding):
            size = static.cache_bytes()
            rows = sample["net_input"]["src_tokens"].size(0) * self.beam_size
            self._say_once("cache", f"self-attention cache of the first batch ({rows} rows x {static.length} "
                           f"positions): keys {size['keys']} bytes, values {size['values']} bytes")  # fmt: skip
        return hypotheses

    def _decoding(self, on_cuda: bool):
        """Static caches (replayed as CUDA graphs on CUDA) where the model's layers allow, else the models' own
        incremental decoding; said once."""
        models = self.model.models
        reason = "an ensemble" if len(models) > 1 else unsupported_decoder(models[0])
        if not self.static_cache:
            reason = "static_cache=False"
        if reason is not None:
            self._say_once("decoding", f"decoding: the model's incremental state (static caches: no, {reason})")
            return IncrementalDecoding(self.model, self.temperature)
        graphs = on_cuda and self.cuda_graphs
        self._say_once("decoding", f"decoding: static caches, CUDA graphs: {'yes' if graphs else 'no'}")
        if self._static is None or isinstance(self._static, GraphedDecoding) != graphs:
            # kept across batches: a batch of the last one's shape reuses its buffers and graphs
            decoding = StaticCacheDecoding(models[0], self.temperature)
            self._static = GraphedDecoding(decoding) if graphs else decoding
        return self._static

    def _say_once(self, topic: str, message: str) -> None:
        if topic not in self._told:
            self._told.add(topic)
            logger.info(message)

    def _reason_for_fairseq(self, sample, constraints) -> Optional[str]:
        """Why this batch goes to fairseq's search, or None."""
        if self.unsupported:
            return self.unsupported
        if constraints is not None:
            return "lexical constraints"
        src_tokens = sample["net_input"].get("src_tokens")
        if src_tokens is None or src_tokens.dim() != 2:
            return "inputs other than source tokens"
        if self.use == "auto" and not src_tokens.is_cuda:
            return "CPU inputs (the fixed-batch search is for CUDA; --generator-use always runs it anywhere)"
        return None

    def _say(self, reason: Optional[str]) -> None:
        if reason is None:
            message = f"beam search: fixed batch x beam ({self.beam_size}), host checks every "
            message += f"{self.fixed_batch.check_every} steps"
        else:
            message = f"beam search: fairseq's SequenceGenerator (the fixed-batch search does not do {reason})"
        self._say_once("search", message)


def unsupported_options(generator: SequenceGenerator, kwargs) -> Optional[str]:
    """The option of ``generator`` that the fixed-batch search lacks, or None."""
    strategy = generator.search
    if type(strategy) is not search.BeamSearch:
        return f"{type(strategy).__name__} (sampling, diverse or constrained search)"
    checks = [
        (generator.match_source_len, "--match-source-len"),
        (generator.repeat_ngram_blocker is not None, "--no-repeat-ngram-size"),
        (generator.lm_model is not None, "language-model fusion"),
        (generator.token_indices_to_suppress is not None, "suppressed tokens"),
        (not generator.model.has_encoder() or not generator.model.has_incremental_states(), "models without an "
         "encoder and an incremental decoder"),
    ]  # fmt: skip
    for failed, name in checks:
        if failed:
            return name
    return None
