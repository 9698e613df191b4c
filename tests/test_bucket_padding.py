"""Padding a batch to fixed shapes (what bounds the shapes a compiled or graph-captured training step sees) changes
neither the loss nor the gradients: padded source positions are masked, padded target positions are ignored by the
loss and come after every real one, padding rows (collab_fairseq.training.buckets.pad_batch) have no target. The
shapes: fairseq's --required-seq-len-multiple, fixed lengths through the collater's ``pad_to_length`` (fairseq's
--num-batch-buckets cannot be used: LanguagePairDataset calls ``np.compat.long``, which numpy 2 removed), and this
package's buckets (rows and lengths)."""

import numpy as np
import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from collab_fairseq.training.buckets import Buckets, pad_batch
from tests.helpers import load_model

SHAPES = {
    "unpadded": (1, None),
    "multiple of 8": (8, None),
    "fixed lengths": (1, {"source": 32, "target": 40}),
    "bucket: rows and lengths": (1, "bucket"),
}
BUCKET = (32, 32, 40)


def sample_of(bin_dir, multiple, lengths):
    cfg = dict(data=str(bin_dir), source_lang="src", target_lang="tgt", dataset_impl=None, train_subset="train")
    task = TranslationTask.setup_task(TranslationConfig(**cfg, required_seq_len_multiple=multiple))
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    sample = dataset.collater([dataset[i] for i in range(24)], pad_to_length=None if lengths == "bucket" else lengths)
    if lengths == "bucket":
        pad, eos = task.source_dictionary.pad(), task.source_dictionary.eos()
        sample = pad_batch(sample, BUCKET, pad, eos, left_pad_source=True)
    return task, sample


def loss_and_gradients(model, task, sample):
    criterion = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    model.zero_grad()
    loss, _, _ = criterion(model, sample)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["collab", "transformer"])
def test_padding_to_a_bucket_changes_neither_loss_nor_gradients(copy_data, collab_run, transformer_checkpoint, kind):
    _, bin_dir = copy_data
    checkpoint = collab_run / "checkpoint_last.pt" if kind == "collab" else transformer_checkpoint
    model = load_model(checkpoint, bin_dir).train()  # dropout 0 in the tiny models: a deterministic forward
    results, shapes = {}, {}
    for name, (multiple, lengths) in SHAPES.items():
        task, sample = sample_of(bin_dir, multiple, lengths)
        shapes[name] = (sample["net_input"]["src_tokens"].shape, sample["target"].shape)
        results[name] = loss_and_gradients(model, task, sample)
    loss, grads = results["unpadded"]
    assert shapes["fixed lengths"] == (torch.Size([24, 32]), torch.Size([24, 40]))
    assert shapes["bucket: rows and lengths"] == (torch.Size([32, 32]), torch.Size([32, 40]))
    for name in ("multiple of 8", "fixed lengths", "bucket: rows and lengths"):
        assert shapes[name] != shapes["unpadded"]  # padded indeed
        padded_loss, padded_grads = results[name]
        torch.testing.assert_close(padded_loss, loss, rtol=1e-6, atol=1e-4)
        assert padded_grads.keys() == grads.keys()
        largest = max(grad.abs().max() for grad in grads.values())
        for param, grad in grads.items():
            # to fp32 precision: sums over other shapes round differently, by CPU (1.7e-5 of the largest gradient
            # on an H100 machine's), also where a gradient is zero in exact arithmetic and only rounding is left
            # (a key bias: softmax ignores a constant per query; 1.3e-7 on an H200 machine's CPU); a padded position
            # that leaked in would be off by far more
            error = (padded_grads[param] - grad).abs().max()
            assert error <= 1e-4 * grad.abs().max() + 1e-5 * largest, (param, error)


def test_buckets_cut_batches_the_way_fairseq_sizes_them():
    """Every pair once; a batch is full at its longest pair's bucket (max(source, target) rounded up: rows that fill
    --max-tokens at that length in multiples of --required-batch-size-multiple), its shorter pairs left over from
    shorter buckets, except a few (left-overs as many as the next bucket's rows; the longest bucket's last two),
    which are at least half full."""
    rng = np.random.default_rng(0)
    source, target = rng.integers(1, 60, 1000), rng.integers(1, 70, 1000)
    buckets = Buckets(width=8, max_tokens=1024, max_sentences=None, batch_multiple=8)
    batches = buckets.batches(np.argsort(source, kind="stable"), source, target)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    filled = []
    for batch in batches:
        rows, s, t = buckets.shape(len(batch), source[batch].max(), target[batch].max())
        length = buckets.length(max(source[batch].max(), target[batch].max()))
        assert max(s, t) == length and len(batch) <= rows <= buckets.rows(length) and rows % 8 == 0
        assert buckets.rows(length) * length <= 1024 and buckets.rows(length) % 8 == 0
        filled.append(len(batch) / buckets.rows(length))
    assert min(filled) >= 0.5 and sum(f < 1 for f in filled) <= 3
    lengths = np.array([4, 5, 60])
    lonely = Buckets(width=8, max_tokens=1024, max_sentences=None).batches(np.arange(3), lengths, lengths)
    assert [b.tolist() for b in lonely] == [[0, 1, 2]]  # short pairs' left-overs join the longest pair
    assert buckets.shape(3, 10, 12) == (8, 16, 16) and buckets.shape(60, 10, 12) == (64, 16, 16)
    assert buckets.shape(65, 10, 12) == (65, 16, 16)  # more rows than the bucket's: as they are
    assert buckets.rows(16) == 64 and buckets.rows(72) == 8 and buckets.rows(1032) == 1
    assert Buckets(8, None, 10).rows(64) == 10 and Buckets(8, 4096, 10, 8).rows(8) == 10
    with pytest.raises(ValueError, match="--max-tokens or --batch-size"):
        Buckets(8, None, None)
