"""Few batch shapes for training: sentence pairs grouped by padded length, batches padded to a few shapes.

A CUDA graph replays one shape; fairseq's batches have about as many shapes as batches. Here a pair belongs to the
bucket of its length as fairseq counts it for --max-tokens, max(source, target), rounded up to a multiple of
``width``; a bucket's batches have the rows fairseq would give a batch of that length (``--max-tokens`` /
``--batch-size`` / ``--required-batch-size-multiple``), a bucket's left-over pairs join the next longer bucket, and
each batch is padded to its longest source and target rounded up to ``width`` (its rows: a partly filled batch is
rounded up to a multiple of 8). The batches are the same every epoch, so the shapes recur: on Multi30k at 16,384
tokens, 33 batches an epoch in 12 shapes, 13.9% of their positions padding (fairseq's own: 40 batches in 40 shapes,
18.9%); at 8,192 tokens 65 batches in 17 shapes, 12.8% (fairseq's: 70, 11.6%), the smallest with 2,129 target
tokens (fairseq's: 2,437). Left-overs kept in their own bucket make batches down to one pair, which trained worse
(results/fast_train_quality). Keying buckets on (source, target) instead gave many more partly filled batches (47%
padding). fairseq's ``--num-batch-buckets`` cannot be used on numpy 2 (``np.compat`` is gone).

Padding leaves the loss and its gradients unchanged (tests/test_bucket_padding.py): padded positions are masked as
keys and ignored as targets, and a padding row has a source of one EOS (so that no attention row is all masked,
which would make NaNs) and no target tokens.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

Shape = Tuple[int, int, int]  # rows, source length, target length
ROW_MULTIPLE = 8  # a partly filled batch: rows rounded up to this, not to the bucket's


@dataclass(frozen=True)
class Buckets:
    width: int  # lengths are rounded up to a multiple of this
    max_tokens: Optional[int]  # fairseq's --max-tokens (rows x max(source, target length))
    max_sentences: Optional[int]  # fairseq's --batch-size
    batch_multiple: int = 1  # fairseq's --required-batch-size-multiple

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"--bucket-width must be >= 1, got {self.width}")
        if not self.max_tokens and not self.max_sentences:
            raise ValueError("bucketed batches need --max-tokens or --batch-size")

    def length(self, n: int) -> int:
        return -(-n // self.width) * self.width

    def rows(self, length: int) -> int:
        """Rows of a bucket of this (rounded) length, the way fairseq sizes a batch of fixed shape
        (FairseqDataset.batch_by_size): max_tokens // length, at most max_sentences, or else rounded down to a
        multiple of batch_multiple."""
        rows = self.max_tokens // max(length, 1) if self.max_tokens else self.max_sentences
        if self.max_sentences:
            rows = min(rows, self.max_sentences)
        elif rows >= self.batch_multiple:
            rows -= rows % self.batch_multiple
        return max(rows, 1)

    def shape(self, rows: int, source: int, target: int) -> Shape:
        """The padded shape of a batch of ``rows`` pairs whose longest source / target have these lengths: rows
        rounded up to a multiple of ROW_MULTIPLE, at most the bucket's (more: left as they are)."""
        s, t = self.length(source), self.length(target)
        full = self.rows(max(s, t))
        return (min(-(-rows // ROW_MULTIPLE) * ROW_MULTIPLE, full) if rows <= full else rows), s, t

    def batches(self, indices: np.ndarray, source_sizes: np.ndarray, target_sizes: np.ndarray) -> List[np.ndarray]:
        """``indices`` (in fairseq's order) cut into batches that fill their bucket's rows: going from the shortest
        bucket to the longest, a bucket's pairs (in fairseq's order) make full batches, and the pairs left over join
        the next longer bucket (padded to its length) instead of making a small batch of their own, unless they are
        as many as a batch of that bucket (then they are one); the longest bucket's last two batches share its pairs
        evenly. A batch is one gradient step whatever its size: a batch of
        a few pairs (a rare length's bucket) would take a full step in a noisy direction, every epoch."""
        lengths = np.maximum(source_sizes[indices], target_sizes[indices])
        keys = -(-lengths // self.width) * self.width
        groups: Dict[int, List[int]] = {}
        for index, key in zip(indices.tolist(), keys.tolist()):
            groups.setdefault(key, []).append(index)
        batches, carried = [], []
        for length in sorted(groups):
            rows = self.rows(length)
            if len(carried) >= rows:  # as many as a batch of this bucket: a batch of their own, almost full
                batches.append(np.array(carried, dtype=np.int64))
                carried = []
            members = carried + groups[length]
            full = len(members) // rows * rows
            batches += [np.array(members[i : i + rows], dtype=np.int64) for i in range(0, full, rows)]
            carried = members[full:]
        if carried:
            if batches and len(batches[-1]) == self.rows(length):  # the longest bucket's last full batch
                last = batches.pop().tolist() + carried
                half = len(last) // 2
                batches += [np.array(last[:half], dtype=np.int64), np.array(last[half:], dtype=np.int64)]
            else:
                batches.append(np.array(carried, dtype=np.int64))
        return batches


def pad_batch(sample: dict, shape: Shape, pad: int, eos: int, left_pad_source: bool, out: Optional[dict] = None):
    """fairseq translation ``sample`` (net_input src_tokens B x S, src_lengths B, prev_output_tokens B x T; target
    B x T; targets right-padded) padded to ``shape`` = (rows, S', T'). Written into ``out`` (a sample of that shape
    from an earlier call, e.g. a CUDA graph's inputs) where given. Returns the padded sample; its other keys are
    ``sample``'s."""
    net = sample["net_input"]
    src, prev, target = net["src_tokens"], net["prev_output_tokens"], sample["target"]
    rows, s, t = shape
    b = src.size(0)
    if out is None:
        out = {
            **sample,
            "net_input": {
                **net,
                "src_tokens": src.new_empty(rows, s),
                "src_lengths": net["src_lengths"].new_empty(rows),
                "prev_output_tokens": prev.new_empty(rows, t),
            },
            "target": target.new_empty(rows, t),
        }
    o_net = out["net_input"]
    for name, value in (("src_tokens", src), ("prev_output_tokens", prev), ("target", target)):
        buffer = o_net[name] if name != "target" else out["target"]
        buffer.fill_(pad)
        columns = value.size(1)
        if name == "src_tokens" and left_pad_source:
            buffer[:b, buffer.size(1) - columns :].copy_(value)
        else:
            buffer[:b, :columns].copy_(value)
    if rows > b:  # padding rows: source EOS, decoder input EOS, no target
        o_net["src_tokens"][b:, -1 if left_pad_source else 0] = eos
        o_net["prev_output_tokens"][b:, 0] = eos
    o_net["src_lengths"][b:].fill_(1)
    o_net["src_lengths"][:b].copy_(net["src_lengths"])
    return out


def batch_shape(sample: dict) -> Tuple[int, int, int]:
    """(rows, source length, target length) of a collated translation sample."""
    net = sample["net_input"]
    return net["src_tokens"].size(0), net["src_tokens"].size(1), net["prev_output_tokens"].size(1)
