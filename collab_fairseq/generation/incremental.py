"""Decoding through the models' own incremental state (fairseq's ``EnsembleModel``), for the fixed-batch search.

Any fairseq encoder-decoder with an incremental decoder decodes this way, ensembles included; it is what the
search falls back to where the static cache (``static_cache.py``) does not know a model's layers.
"""

from typing import Dict, List

import torch
from fairseq.sequence_generator import EnsembleModel
from torch import Tensor


class IncrementalDecoding:
    """``start`` / ``step`` / ``reorder`` over fairseq's incremental decoding of ``model`` (an EnsembleModel).

    Rows are B*K hypotheses, K per sentence, in sentence order. The search only ever permutes the rows of one
    sentence, whose encoder outputs are equal, so the encoder outputs (and the cross-attention caches, which fairseq's
    attention layers leave alone while the batch keeps its size) are never reordered.
    """

    def __init__(self, model: EnsembleModel, temperature: float = 1.0):
        self.model = model
        self.temperature = temperature
        self.states: List[Dict[str, Dict]] = []
        self.encoder_outs = None

    def start(self, net_input: Dict[str, Tensor], beam: int, max_len: int) -> None:
        self.model.set_decoder_beam_size(beam)
        self.states = [{} for _ in range(self.model.models_size)]
        encoder_outs = self.model.forward_encoder(net_input)
        src_tokens = net_input["src_tokens"]
        rows = torch.arange(src_tokens.size(0), device=src_tokens.device).repeat_interleave(beam)
        self.encoder_outs = self.model.reorder_encoder_out(encoder_outs, rows)

    def step(self, tokens: Tensor, step: int) -> Tensor:
        """tokens: B*K x (step+1), the hypotheses so far; returns the next log-probabilities, B*K x V (float)."""
        lprobs, _ = self.model.forward_decoder(tokens, self.encoder_outs, self.states, self.temperature)
        return lprobs

    def reorder(self, rows: Tensor) -> None:
        self.model.reorder_incremental_state(self.states, rows)
