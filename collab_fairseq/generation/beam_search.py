"""Beam search over a fixed batch x beam: fairseq's search, without a host sync inside a step.

fairseq's ``SequenceGenerator`` removes a sentence from the batch once it has ``beam`` finished hypotheses, which
needs the host at every step (``masked_select`` on EOS, ``.tolist()``, a batch that changes size, a cache that is
re-indexed). Here the batch keeps its size: finished sentences go on being decoded and are masked out, finished
hypotheses are written into preallocated slots, and the host asks whether all sentences are done only every
``check_every`` steps. The rules are fairseq's ``BeamSearch`` and ``SequenceGenerator._generate`` (the 2 x beam
candidates, EOS taken only among the first ``beam`` of them, ``cands_to_ignore``, the length penalty, prefix tokens
with their first-beam replication, ``min_len`` / ``max_len``), so the hypotheses and scores are fairseq's
(tests/test_beam_search.py).

The decoding is one of incremental.py's, static_cache.py's or cuda_graphs.py's: ``start`` runs the encoder, ``step``
gives the next log-probabilities of every row (B*K x V) and ``reorder`` selects the rows that go on.
"""

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor


class SearchState:
    """The tensors of one batch's search. B sentences, K hypotheses each, L = max_len.

    tokens: B*K x (L+2), column 0 the BOS; scores: B*K x (L+1), cumulative; ignore: B x K (fairseq's
    ``cands_to_ignore``); finished: B; done: B, finished hypotheses so far; and per finished slot (B x K):
    fin_tokens x (L+1), fin_positional x (L+1), fin_score, fin_length (K+1 slots: the last is never read).
    """

    def __init__(self, bsz: int, beam: int, max_len: int, bos: int, pad: int, device):
        rows = bsz * beam
        self.tokens = torch.full((rows, max_len + 2), pad, dtype=torch.long, device=device)
        self.tokens[:, 0] = bos
        self.scores = torch.zeros(rows, max_len + 1, device=device)
        self.ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=device)
        self.finished = torch.zeros(bsz, dtype=torch.bool, device=device)
        self.done = torch.zeros(bsz, dtype=torch.long, device=device)
        slots = beam + 1  # the last one takes the writes of candidates that are not kept
        self.fin_tokens = torch.full((bsz, slots, max_len + 1), pad, dtype=torch.long, device=device)
        self.fin_positional = torch.zeros(bsz, slots, max_len + 1, device=device)
        self.fin_score = torch.zeros(bsz, slots, device=device)
        self.fin_length = torch.zeros(bsz, slots, dtype=torch.long, device=device)
        self.row_offsets = torch.arange(bsz, device=device).unsqueeze(1) * beam  # B x 1


class FixedBatchBeamSearch:
    """fairseq's beam search (``search.BeamSearch`` in ``SequenceGenerator``) over a batch that keeps its size.

    Arguments are SequenceGenerator's, with its meaning (``max_len``: the model's bound where fairseq's is 0);
    ``check_every``: steps between the host's checks whether every sentence is finished (the one host sync of the
    loop).
    """

    def __init__(
        self,
        tgt_dict,
        beam_size: int,
        max_len_a: float,
        max_len_b: int,
        max_len: int,
        min_len: int,
        normalize_scores: bool,
        len_penalty: float,
        unk_penalty: float,
        check_every: int = 8,
    ):
        self.pad, self.unk, self.eos = tgt_dict.pad(), tgt_dict.unk(), tgt_dict.eos()
        self.vocab_size = len(tgt_dict)
        self.beam_size = min(beam_size, self.vocab_size - 1)  # as fairseq: pad is never chosen
        self.max_len_a, self.max_len_b, self.max_len = max_len_a, max_len_b, max_len
        self.min_len = min_len
        self.normalize_scores, self.len_penalty, self.unk_penalty = normalize_scores, len_penalty, unk_penalty
        self.check_every = check_every

    def output_length(self, src_len: int) -> int:
        """fairseq's bound on the hypotheses' length (EOS not counted)."""
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        if self.min_len > max_len:
            raise ValueError(f"--min-len {self.min_len} is larger than the longest output allowed ({max_len})")
        return max_len

    @torch.no_grad()
    def search(
        self, decoding, net_input: Dict[str, Tensor], prefix_tokens: Optional[Tensor] = None, bos: Optional[int] = None
    ) -> List[List[Dict[str, Tensor]]]:
        src_tokens = net_input["src_tokens"]
        bsz, src_len = src_tokens.shape[:2]
        beam = self.beam_size
        max_len = self.output_length(src_len)
        decoding.start(net_input, beam, max_len)
        state = SearchState(bsz, beam, max_len, self.eos if bos is None else bos, self.pad, src_tokens.device)
        if prefix_tokens is not None:
            prefix_tokens = prefix_tokens.repeat_interleave(beam, dim=0)  # B*K x P
        for step in range(max_len + 1):  # one more step than max_len, for the EOS
            lprobs = decoding.step(state.tokens[:, : step + 1], step)
            lprobs = self._constrain(lprobs, state, step, max_len, prefix_tokens)
            order = self._advance(state, lprobs, step, max_len)
            if step == max_len or ((step + 1) % self.check_every == 0 and bool(state.finished.all())):
                break
            decoding.reorder(order)
        return self._hypotheses(state)

    def _constrain(self, lprobs: Tensor, state: SearchState, step: int, max_len: int, prefix: Optional[Tensor]):
        """The step's log-probabilities (B*K x V, float) under fairseq's rules, in place."""
        lprobs.masked_fill_(lprobs != lprobs, -math.inf)
        lprobs[:, self.pad] = -math.inf
        lprobs[:, self.unk] -= self.unk_penalty
        if step >= max_len:
            lprobs[:, : self.eos] = -math.inf
            lprobs[:, self.eos + 1 :] = -math.inf
        if prefix is not None and step < prefix.size(1) and step < max_len:
            return self._force_prefix(lprobs, state, step, prefix[:, step])
        if step < self.min_len:  # as fairseq: not where a prefix token is forced
            lprobs[:, self.eos] = -math.inf
        return lprobs

    def _force_prefix(self, lprobs: Tensor, state: SearchState, step: int, forced: Tensor) -> Tensor:
        """fairseq's ``_prefix_tokens``: rows with a forced token (not pad) may only take it; where the forced token
        is EOS, every hypothesis of the sentence becomes a copy of its first (tokens, scores, log-probs)."""
        keep = forced.ne(self.pad).unsqueeze(1)
        only_forced = torch.full_like(lprobs, -math.inf).scatter_(
            1, forced.unsqueeze(1), lprobs.gather(1, forced[:, None])
        )
        lprobs = torch.where(keep, only_forced, lprobs)
        copy = forced.view(-1, self.beam_size)[:, 0].eq(self.eos)  # B
        for name in ("tokens", "scores"):
            setattr(state, name, _first_beam_where(getattr(state, name), copy, self.beam_size))
        return _first_beam_where(lprobs, copy, self.beam_size)

    def _advance(self, state: SearchState, lprobs: Tensor, step: int, max_len: int) -> Tensor:
        """One step of fairseq's beam search: finish the hypotheses that end in EOS, keep the best K others.
        Returns the rows (B*K) the next step continues from."""
        beam, vocab = self.beam_size, lprobs.size(1)
        bsz = state.finished.size(0)
        lprobs = lprobs.view(bsz, beam, vocab)
        if step == 0:  # all hypotheses are equal: only the first beam's
            flat = lprobs[:, 0, :]
        else:
            flat = (lprobs + state.scores[:, step - 1].view(bsz, beam, 1)).view(bsz, -1)
        cand_scores, cand_index = torch.topk(flat, k=min(2 * beam, flat.size(1) - 1))
        cand_beams = torch.div(cand_index, vocab, rounding_mode="trunc")
        cand_tokens = cand_index.fmod(vocab)
        cand_rows = cand_beams + state.row_offsets  # B x C
        eos = cand_tokens.eq(self.eos) & cand_scores.ne(-math.inf)
        eos[:, :beam] &= ~state.ignore
        self._finish(state, eos[:, :beam], cand_rows[:, :beam], cand_scores[:, :beam], step, max_len)

        # fairseq: the K best candidates that do not end in EOS (and are not ignored) go on
        cand_size = 2 * beam
        blocked = eos.clone()
        blocked[:, :beam] |= state.ignore
        order_key = blocked.long() * cand_size + torch.arange(blocked.size(1), device=blocked.device)
        new_ignore, active = torch.topk(order_key, k=beam, dim=1, largest=False)
        state.ignore = new_ignore.ge(cand_size)
        rows = torch.gather(cand_rows, 1, active).view(-1)
        state.tokens[:, : step + 1] = state.tokens[rows, : step + 1]
        state.tokens.view(bsz, beam, -1)[:, :, step + 1] = torch.gather(cand_tokens, 1, active)
        if step > 0:
            state.scores[:, :step] = state.scores[rows, :step]
        state.scores.view(bsz, beam, -1)[:, :, step] = torch.gather(cand_scores, 1, active)
        return rows

    def _finish(self, state: SearchState, eos: Tensor, rows: Tensor, eos_scores: Tensor, step: int, max_len: int):
        """Write the hypotheses ending in EOS (eos, rows, eos_scores: B x K candidates) into the free slots of
        sentences, in candidate order, as fairseq's ``finalize_hypos`` appends them (a finished sentence has no free
        slot left). Fixed shapes only: a candidate that is not taken is written into slot K, which is never read."""
        beam = self.beam_size
        slot = state.done.unsqueeze(1) + eos.long().cumsum(1) - 1
        taken = eos & slot.lt(beam)
        slot = torch.where(taken, slot, torch.full_like(slot, beam))  # B x K
        tokens = state.tokens[rows, 1:]  # B x K x (L+1)
        tokens[:, :, step] = self.eos
        positional = state.scores[rows]  # B x K x (L+1), cumulative
        positional[:, :, step] = eos_scores
        positional[:, :, 1 : step + 1] = positional[:, :, 1 : step + 1] - positional[:, :, :step]
        score = eos_scores / (step + 1) ** self.len_penalty if self.normalize_scores else eos_scores
        into = slot.unsqueeze(2).expand_as(tokens)
        state.fin_tokens.scatter_(1, into, tokens)
        state.fin_positional.scatter_(1, into, positional)
        state.fin_score.scatter_(1, slot, score)
        state.fin_length.scatter_(1, slot, torch.full_like(slot, step + 1))
        state.done += taken.sum(1)
        state.finished |= eos.any(1) & (state.done.eq(beam) | (step == max_len))

    def _hypotheses(self, state: SearchState) -> List[List[Dict[str, Tensor]]]:
        """fairseq's output: per sentence, its finished hypotheses sorted by score (best first)."""
        done, fin_tokens, fin_positional, fin_score, fin_length = (
            t.cpu() for t in (state.done, state.fin_tokens, state.fin_positional, state.fin_score, state.fin_length)
        )
        empty = torch.empty(0)
        out = []
        for b in range(done.size(0)):
            hypos = []
            for slot in range(int(done[b])):
                length = int(fin_length[b, slot])
                hypos.append(
                    {
                        "tokens": fin_tokens[b, slot, :length],
                        "score": fin_score[b, slot],
                        "attention": empty,
                        "alignment": empty,
                        "positional_scores": fin_positional[b, slot, :length],
                    }
                )
            scores = torch.tensor([float(h["score"].item()) for h in hypos])
            _, best_first = torch.sort(scores, descending=True)  # as fairseq sorts them
            out.append([hypos[i] for i in best_first])
        return out


def _first_beam_where(tensor: Tensor, copy: Tensor, beam: int) -> Tensor:
    """``tensor`` (B*K x N) with every row of the sentences in ``copy`` (B) replaced by their first hypothesis's."""
    grouped = tensor.view(-1, beam, tensor.size(-1))
    return torch.where(copy.view(-1, 1, 1), grouped[:, :1].expand_as(grouped), grouped).reshape_as(tensor)
