"""fairseq's FP16Optimizer copies between the fp16 model and its flat fp32 master weights in one launch each way
(collab_fairseq.training.fp16_copies): the same values as fairseq's per-parameter loops, with gradients anywhere or
in one flat buffer (as --task translation_fast keeps them), a parameter without a gradient included."""

import copy

import pytest
import torch
from fairseq.optim.fp16_optimizer import FP16Optimizer

from collab_fairseq.training.fp16_copies import _as_one_buffer, speed_up_fp16_optimizer


def fp16_optimizer(shapes, flat_grads: bool, seed=0):
    """An FP16Optimizer's copy state without its construction (which needs CUDA): fp16 parameters with gradients,
    the flat fp32 weights keyed by the parameters' device index (None on the CPU), as fairseq keys them."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).half()) for s in shapes]
    sizes = [p.numel() for p in params]
    flat16 = torch.randn(sum(sizes), generator=generator).half()
    for p, piece in zip(params, torch.split(flat16, sizes)):
        p.grad = piece.view_as(p) if flat_grads else piece.clone().view_as(p)
    if not flat_grads and len(params) > 1:
        params[1].grad = None  # fairseq copies zeros for it
    flat32 = torch.nn.Parameter(torch.randn(sum(sizes), generator=generator) / 3)
    flat32.grad = torch.full_like(flat32, float("nan"))
    optimizer = FP16Optimizer.__new__(FP16Optimizer)
    optimizer.fp16_params, optimizer.fp32_params, optimizer._needs_sync = params, {None: flat32}, True
    return optimizer


@pytest.mark.parametrize("flat_grads", [False, True])
def test_one_launch_copies_give_fairseqs_values(flat_grads):
    shapes = [(7, 5), (3,), (4, 4, 2), (1,), (11,)]
    theirs, ours = fp16_optimizer(shapes, flat_grads), fp16_optimizer(shapes, flat_grads)
    grads = [p.grad for p in ours.fp16_params if p.grad is not None]
    assert (_as_one_buffer(grads) is not None) == flat_grads  # one plain copy; else one multi-tensor copy
    assert speed_up_fp16_optimizer(ours) and speed_up_fp16_optimizer(ours)  # once bound, stays so
    assert "_sync_fp16_grads_to_fp32" not in vars(theirs)  # fairseq's class untouched
    for optimizer in (theirs, ours):
        optimizer._sync_fp16_grads_to_fp32()
        optimizer._sync_fp32_params_to_fp16()
    (their32,), (our32,) = theirs.fp32_params.values(), ours.fp32_params.values()
    assert not their32.grad.isnan().any() and torch.equal(our32.grad, their32.grad)
    for mine, fairseqs in zip(ours.fp16_params, theirs.fp16_params):
        assert mine.dtype == torch.float16 and torch.equal(mine.data, fairseqs.data)
    assert not ours._needs_sync
    before = our32.grad.clone()
    for optimizer in (theirs, ours):
        optimizer.fp16_params[0].grad.add_(1)  # no backward since the last sync: nothing to copy
    ours._sync_fp16_grads_to_fp32()
    assert torch.equal(our32.grad, before)
    for optimizer in (theirs, ours):  # the next update: the same gradient tensors, new values
        for p in optimizer.fp16_params:
            if p.grad is not None:
                p.grad.mul_(-2)
        optimizer._needs_sync = True
        optimizer._sync_fp16_grads_to_fp32()
    assert torch.equal(our32.grad, their32.grad)


def test_other_optimizers_are_left_as_they_are():
    plain = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    assert not speed_up_fp16_optimizer(plain) and not speed_up_fp16_optimizer(object())
    per_parameter = fp16_optimizer([(2,)], flat_grads=False)
    per_parameter.fp32_params = [copy.deepcopy(per_parameter.fp32_params[None])]  # --fp16-no-flatten-grads
    assert not speed_up_fp16_optimizer(per_parameter)


def test_the_task_binds_them_unless_told_to_keep_fairseqs(copy_data):
    from collab_fairseq.tasks.translation_fast import TranslationFastConfig, TranslationFastTask

    _, bin_dir = copy_data
    tasks = {keep: TranslationFastTask.setup_task(TranslationFastConfig(
        data=str(bin_dir), source_lang="src", target_lang="tgt", dataset_impl=None, fairseq_fp16_copies=keep))
        for keep in (False, True)}  # fmt: skip
    optimizers = {keep: fp16_optimizer([(3,), (2, 2)], flat_grads=True) for keep in (False, True)}
    assert tasks[False]._bind_fp16_copies(optimizers[False])
    assert not tasks[True]._bind_fp16_copies(optimizers[True])
    assert "_sync_fp16_grads_to_fp32" not in vars(optimizers[True])  # fairseq's methods, untouched
