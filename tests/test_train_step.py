"""The training step of ``--task translation_fast``: bucketed batches and the micro-batch padded to its bucket give
fairseq's loss, counts and gradients; gradients stay in buffers a recorded backward can add into; the loss scale is
the optimizer's; fairseq-train runs it and says which step runs. On CUDA: the recorded (CUDA graph) micro-batch
gives the eager one's loss and gradients (skipped without a GPU)."""

import re

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.tasks.translation import TranslationTask

from collab_fairseq.models.sync_free import make_sync_free
from collab_fairseq.tasks.translation_fast import TranslationFastConfig, TranslationFastTask
from collab_fairseq.training.buckets import Buckets
from collab_fairseq.training.train_step import BucketedTrainStep
from tests.helpers import TINY_MODEL, TRAIN_FLAGS, USER_DIR, fairseq_train, load_model


class Backward:
    """The part of a fairseq optimizer the step uses: ``backward`` scales the loss, and notes that it ran."""

    def __init__(self, scale=1.0):
        self.scale, self.calls = scale, 0

    def backward(self, loss):
        (loss * self.scale).backward()
        self.calls += 1


def fast_task(bin_dir, mode="bucketed"):
    """The task on the tiny data, lengths rounded up to 8 (its pairs are shorter: every batch gets padded)."""
    cfg = TranslationFastConfig(data=str(bin_dir), source_lang="src", target_lang="tgt", dataset_impl=None,
                                train_subset="train", required_seq_len_multiple=1, train_step=mode,
                                bucket_width=8)  # fmt: skip
    task = TranslationFastTask.setup_task(cfg)
    task.load_dataset("train")
    return task


def first_batches(task, count, max_tokens=600):
    dataset = task.dataset("train")
    batches = dataset.batch_by_size(dataset.ordered_indices(), max_tokens=max_tokens, required_batch_size_multiple=8)
    return [dataset.collater([dataset[i] for i in batch]) for batch in batches[:count]]


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["collab", "transformer"])
def test_bucketed_step_gives_fairseqs_loss_counts_and_gradients(copy_data, collab_run, transformer_checkpoint, kind):
    _, bin_dir = copy_data
    checkpoint = collab_run / "checkpoint_last.pt" if kind == "collab" else transformer_checkpoint
    model = load_model(checkpoint, bin_dir).train()  # dropout 0: deterministic
    task = fast_task(bin_dir)
    samples = first_batches(task, 3)
    assert task.buckets == Buckets(8, 600, None, 8)
    criterion = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    results = {}
    for name, step in (("fairseq", TranslationTask.train_step), ("bucketed", TranslationFastTask.train_step)):
        model.zero_grad(set_to_none=True)
        outputs = [step(task, sample, model, criterion, Backward(), update_num=1) for sample in samples]
        results[name] = outputs, gradients(model)
    assert task.bucketed_step is not None and not task.bucketed_step.graphs  # padded eager micro-batches
    net = samples[0]["net_input"]
    unpadded = (net["src_tokens"].size(0), net["src_tokens"].size(1), net["prev_output_tokens"].size(1))
    assert task.bucketed_step.buckets.shape(*unpadded) != unpadded  # padded indeed
    (theirs, their_grads), (ours, our_grads) = results["fairseq"], results["bucketed"]
    for (loss, size, log), (their_loss, their_size, their_log) in zip(ours, theirs):
        torch.testing.assert_close(loss, their_loss, rtol=1e-6, atol=1e-4)
        assert size == their_size and log.keys() == their_log.keys()
        for key in ("ntokens", "nsentences", "sample_size"):
            assert log[key] == their_log[key], key
        torch.testing.assert_close(log["nll_loss"], their_log["nll_loss"], rtol=1e-6, atol=1e-4)
    assert our_grads.keys() == their_grads.keys()
    for param, grad in their_grads.items():
        error = (our_grads[param] - grad).abs().max()
        assert error <= 1e-5 * grad.abs().max() + 1e-6, (param, error)  # k_proj.bias: ~0 (softmax shift)


def test_gradients_stay_in_place_and_the_loss_scale_is_the_optimizers(copy_data, collab_run):
    _, bin_dir = copy_data
    model = load_model(collab_run / "checkpoint_last.pt", bin_dir).train()
    params = [p for p in model.parameters() if p.requires_grad]
    step = BucketedTrainStep(Buckets(8, 600, None, 8), pad=1, eos=2, left_pad_source=True, graphs=False)
    params[0].grad = torch.ones_like(params[0])  # from an eager micro-batch of the same update
    step._keep_gradients_in_place(model)
    flat = step._flat[torch.float32]
    assert flat.numel() == sum(p.numel() for p in params)
    assert torch.equal(params[0].grad, torch.ones_like(params[0])) and not flat[params[0].numel() :].any()
    views = [p.grad for p in params]
    loss = sum(p.sum() for p in params)
    loss.backward()  # accumulates into the views, in place
    assert all(p.grad is v for p, v in zip(params, views))
    assert torch.equal(params[0].grad, 2 * torch.ones_like(params[0]))
    for p in params:  # fairseq's zero_grad
        p.grad = None
    step._keep_gradients_in_place(model)
    assert all(p.grad is v for p, v in zip(params, views)) and not flat.any()
    optimizer = Backward(scale=128.0)
    assert step._loss_scale(optimizer).item() == 128.0 and optimizer.calls == 1
    assert not flat.any()  # the leaf is not a parameter


def test_fairseqs_step_is_the_default_and_a_gpu_run_of_the_others_is_warned(copy_data, monkeypatch, caplog):
    """On a GPU the bucketed and graphed steps trained worse models than fairseq's (results/fast_train_quality):
    they run only when asked for, and then the log says so."""
    _, bin_dir = copy_data
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (
        TranslationFastConfig().train_step == "fairseq" and fast_task(bin_dir, "fairseq").train_step_mode() == "fairseq"
    )
    task = fast_task(bin_dir, "auto")
    assert task.train_step_mode() == "graphs"
    first_batches(task, 1)  # the training batches: the buckets
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with caplog.at_level("WARNING"):
        assert task._bucketed_step(model) is not None
    assert "trained worse models than fairseq's" in caplog.text and "--train-step fairseq (the default)" in caplog.text


def test_fairseq_train_runs_the_bucketed_step_and_says_so(copy_data, tmp_path):
    """``--train-step graphs`` trains (on the CPU with padded eager micro-batches); each epoch sees every pair once.
    Without ``--train-step`` the task trains with fairseq's batches and step."""
    _, bin_dir = copy_data
    common = ["--user-dir", USER_DIR, "--arch", "transformer_collab_iwslt_de_en", "--collab-key-dim", "16",
              *TINY_MODEL, *TRAIN_FLAGS, "--max-epoch", "1", "--no-save", "--save-dir", tmp_path,
              "--task", "translation_fast", "--required-batch-size-multiple", "8"]  # fmt: skip
    logs = {
        "graphs": fairseq_train(bin_dir, *common, "--train-step", "graphs"),
        "fairseq": fairseq_train(bin_dir, *common),
    }
    if torch.cuda.is_available():
        assert "training step: a CUDA graph per batch shape" in logs["graphs"]
    else:
        assert "training step: padded eager micro-batches (CUDA graphs need a GPU)" in logs["graphs"]
    assert "encoder and decoder: forward without host syncs" in logs["graphs"]
    assert re.search(r"training batches: \d+ in \d+ shapes \(lengths rounded up to 4\), [\d.]+% of positions padding",
                     logs["graphs"])  # fmt: skip
    assert "training step: fairseq's (--train-step fairseq)" in logs["fairseq"]
    assert "training batches" not in logs["fairseq"] and "without host syncs" not in logs["fairseq"]

    def sentences(log):  # the epoch's average batch size x its updates
        bsz, updates = re.search(r"train \| epoch 001 \|.* bsz ([\d.]+) \| num_updates (\d+)", log).groups()
        return float(bsz) * int(updates)

    assert sentences(logs["graphs"]) == pytest.approx(3000, rel=0.01) == sentences(logs["fairseq"])  # 3,000 pairs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ["collab", "transformer"])
def test_recorded_micro_batch_gives_the_eager_loss_and_gradients(copy_data, collab_run, transformer_checkpoint, kind):
    """Several updates of two micro-batches each (a shape's first batch eager, then recorded and replayed), the loss
    scale changing."""
    _, bin_dir = copy_data
    checkpoint = collab_run / "checkpoint_last.pt" if kind == "collab" else transformer_checkpoint
    model = load_model(checkpoint, bin_dir).cuda().train()
    make_sync_free(model)  # as the task's build_model does
    task = fast_task(bin_dir, mode="graphs")
    samples = [{k: (v.cuda() if torch.is_tensor(v) else {n: t.cuda() for n, t in v.items()} if k == "net_input"
                    else v) for k, v in s.items()} for s in first_batches(task, 3)]  # fmt: skip
    criterion = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    eager = BucketedTrainStep(task.buckets, 1, 2, True, graphs=False)
    graphed = BucketedTrainStep(task.buckets, 1, 2, True, graphs=True)
    for update, scale in enumerate((128.0, 128.0, 64.0, 64.0)):
        results = {}
        for name, step in (("eager", eager), ("graphed", graphed)):
            for p in model.parameters():
                p.grad = None
            pair = samples[update % 2 : update % 2 + 2]
            outputs = [step(sample, model, criterion, Backward(scale), False) for sample in pair]
            results[name] = outputs, gradients(model)
        (ours, our_grads), (theirs, their_grads) = results["graphed"], results["eager"]
        for (loss, size, log), (their_loss, their_size, their_log) in zip(ours, theirs):
            torch.testing.assert_close(loss, their_loss, rtol=1e-5, atol=1e-4)
            assert size == their_size and log["ntokens"] == their_log["ntokens"]
        for param, grad in their_grads.items():
            torch.testing.assert_close(our_grads[param], grad, rtol=1e-4, atol=1e-5 * scale)
    assert graphed.failed is None and len(graphed.recorded) >= 1 and graphed.replays >= 3


def test_the_future_mask_is_grown_once_to_the_decoders_positions(copy_data, transformer_checkpoint):
    """A recorded graph reads fairseq's future mask; fairseq makes it anew (freeing the old one) for a longer batch
    unless it already covers every position."""
    from collab_fairseq.training.train_step import future_mask_of, grow_future_mask

    _, bin_dir = copy_data
    model = load_model(transformer_checkpoint, bin_dir)
    grow_future_mask(model, torch.device("cpu"), torch.float32)
    mask = future_mask_of(model)
    assert mask.shape == (model.decoder.max_positions(),) * 2
    model.decoder.buffered_future_mask(torch.empty(37, 2, 8))
    assert future_mask_of(model) is mask


def test_a_transformer_that_still_syncs_is_not_recorded_and_says_why(copy_data, transformer_checkpoint, caplog):
    """fairseq's own encoder and decoder read GPU values on the host, which no recording can hold: the step runs
    padded eager micro-batches instead, from the first batch, and says how to give the model the sync-free forward
    (before, the capture failed and the log said only "a previous error during capture")."""
    from collab_fairseq.training.train_step import graph_unsupported, outside_torch

    _, bin_dir = copy_data
    model = load_model(transformer_checkpoint, bin_dir).train()
    task = fast_task(bin_dir, mode="graphs")
    sample = first_batches(task, 1)[0]
    criterion = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    step = BucketedTrainStep(task.buckets, 1, 2, True, graphs=True)
    with caplog.at_level("WARNING"):
        for _ in range(3):  # a shape's second batch would be recorded
            loss, _, _ = step(sample, model, criterion, Backward(), False)
    assert step.failed == graph_unsupported(model) and "make_sync_free" in step.failed and not step.recorded
    assert caplog.text.count("no CUDA graphs") == 1 and step.eager_steps == 3
    make_sync_free(model)
    assert graph_unsupported(model) is None
    with pytest.raises(RuntimeError) as raised:  # a capture's failure names the code outside torch that broke it
        torch.ones(2).view(3)
    assert outside_torch(raised.value).startswith(__file__ + ":")
