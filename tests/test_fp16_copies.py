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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fairseq's FP16Optimizer needs CUDA")
@pytest.mark.parametrize("flat_grads", [False, True])
def test_a_real_fp16_optimizer_updates_the_same_with_one_launch_copies(flat_grads):
    """fairseq's FP16Optimizer built as fairseq-train builds it (Adam, flat fp32 weights on the GPU): several updates
    with the one-launch copies leave every fp16 parameter and the fp32 weights bit for bit as fairseq's copies do."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        "unused", "--arch", "transformer", "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "1e-4",
        "--fp16", "--fp16-init-scale", "128"])  # fmt: skip
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(0)
    template = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    models = [copy.deepcopy(template).cuda().half() for _ in range(2)]
    optimizers = [FP16Optimizer.build_optimizer(cfg, list(m.parameters())) for m in models]
    assert speed_up_fp16_optimizer(optimizers[1])
    for update in range(4):
        inputs = torch.randn(64, 16, device="cuda").half()
        for model, optimizer in zip(models, optimizers):
            if flat_grads:  # the gradients as --task translation_fast's step keeps them: views of one buffer
                flat = torch.zeros(sum(p.numel() for p in model.parameters()), device="cuda", dtype=torch.half)
                for p, piece in zip(model.parameters(), flat.split([p.numel() for p in model.parameters()])):
                    p.grad = piece.view_as(p)
            optimizer.backward(model(inputs).float().pow(2).mean())
            optimizer.multiply_grads(1 / 64)
            optimizer.clip_grad_norm(0.0)
            optimizer.step()
            optimizer.zero_grad()
        for theirs, ours in zip(models[0].parameters(), models[1].parameters()):
            assert ours.dtype == torch.half and torch.equal(ours, theirs), update
        (their32,), (our32,) = optimizers[0].fp32_params.values(), optimizers[1].fp32_params.values()
        assert torch.equal(our32, their32) and not torch.equal(our32, torch.zeros_like(our32))
    assert not torch.equal(models[1][0].weight.float(), template[0].weight.cuda())  # the updates changed it
