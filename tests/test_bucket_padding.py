"""Padding a batch to fixed shapes (what bounds the shapes a compiled or graph-captured training step sees) changes
neither the loss nor the gradients: padded source positions are masked, padded target positions are ignored by the
loss and come after every real one. The shapes: fairseq's --required-seq-len-multiple, and fixed lengths through the
collater's ``pad_to_length`` (fairseq's --num-batch-buckets cannot be used: LanguagePairDataset calls
``np.compat.long``, which numpy 2 removed)."""

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from tests.helpers import load_model

SHAPES = {"unpadded": (1, None), "multiple of 8": (8, None), "fixed lengths": (1, {"source": 32, "target": 40})}


def sample_of(bin_dir, multiple, lengths):
    cfg = dict(data=str(bin_dir), source_lang="src", target_lang="tgt", dataset_impl=None, train_subset="train")
    task = TranslationTask.setup_task(TranslationConfig(**cfg, required_seq_len_multiple=multiple))
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    return task, dataset.collater([dataset[i] for i in range(24)], pad_to_length=lengths)


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
    for name in ("multiple of 8", "fixed lengths"):
        assert shapes[name] != shapes["unpadded"]  # padded indeed
        padded_loss, padded_grads = results[name]
        torch.testing.assert_close(padded_loss, loss, rtol=1e-6, atol=1e-4)
        assert padded_grads.keys() == grads.keys()
        for param, grad in grads.items():  # to fp32 precision: sums over other shapes round differently
            error = (padded_grads[param] - grad).abs().max()
            assert error <= 1e-5 * grad.abs().max() + 1e-7, (param, error)
