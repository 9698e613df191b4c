"""fairseq's FP16Optimizer with its copies between the fp16 model and the fp32 master weights done in one launch.

With ``--fp16`` fairseq keeps an fp32 copy of all parameters in one flat tensor; every update it copies each fp16
gradient into it and, after the optimizer step, each fp32 slice back into its fp16 parameter: two Python-loop copies
per parameter (506 for WMT-base) launched one by one while the GPU waits for the host. Here the same copies run as
one multi-tensor copy each way (one plain copy where the gradients already lie in one flat buffer in parameter order,
as ``--task translation_fast``'s step keeps them). The values are the same: a copy rounds as a copy does.

:func:`speed_up_fp16_optimizer` binds the two methods to one optimizer instance (fairseq's class is not changed).
"""

import types
from typing import List

import torch
from fairseq.optim.fp16_optimizer import FP16Optimizer
from torch import Tensor


def speed_up_fp16_optimizer(optimizer) -> bool:
    """Give ``optimizer`` (fairseq's FP16Optimizer with flat fp32 weights on one device) the one-launch copies.
    Returns whether it has them now; any other optimizer is left as it is."""
    if not isinstance(optimizer, FP16Optimizer) or not optimizer.has_flat_params or len(optimizer.fp32_params) != 1:
        return False
    if getattr(optimizer, "_one_launch_copies", False):
        return True
    # fairseq builds the flat fp32 weights and gradient once: their per-parameter views are cut once too
    (flat32,) = optimizer.fp32_params.values()
    with_grad = [p for p in optimizer.fp16_params if p.requires_grad]
    optimizer._fp32_weight_views = _fp32_slices(flat32.data, optimizer.fp16_params)
    optimizer._fp32_grad_views = _fp32_slices(flat32.grad.data, with_grad)
    optimizer._sync_fp16_grads_to_fp32 = types.MethodType(sync_fp16_grads_to_fp32, optimizer)
    optimizer._sync_fp32_params_to_fp16 = types.MethodType(sync_fp32_params_to_fp16, optimizer)
    optimizer._one_launch_copies = True
    return True


def _fp32_slices(flat: Tensor, params: List[Tensor]) -> List[Tensor]:
    """``flat`` cut into one view per parameter, in order, each of that parameter's shape."""
    sizes = [p.numel() for p in params]
    return [piece.view_as(p) for piece, p in zip(torch.split(flat.narrow(0, 0, sum(sizes)), sizes), params)]


def _as_one_buffer(tensors: List[Tensor]) -> Tensor:
    """The flat buffer that ``tensors`` fill in order, back to back and wholly, or None."""
    base = tensors[0]._base if tensors else None
    if base is None or base.dim() != 1 or not base.is_contiguous():
        return None
    offset = base.storage_offset()
    for t in tensors:
        if t._base is not base or t.storage_offset() != offset or not t.is_contiguous():
            return None
        offset += t.numel()
    return base if offset == base.storage_offset() + base.numel() else None


def sync_fp16_grads_to_fp32(self) -> None:
    """FP16Optimizer._sync_fp16_grads_to_fp32 (flat fp32 weights, one device) in one launch: the fp16 gradients
    (zeros where a parameter has none) into the fp32 gradient."""
    if not self._needs_sync:
        return
    (flat32,) = self.fp32_params.values()
    params = [p for p in self.fp16_params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    cached = getattr(self, "_grads_buffer", None)  # the same gradient tensors as last time: the same answer
    if cached is not None and len(cached[0]) == len(grads) and all(a is b for a, b in zip(cached[0], grads)):
        flat16 = cached[1]
    else:
        flat16 = _as_one_buffer(grads)
        # kept only for the step's gradient buffer, which lives on anyway: eager gradients are freed by zero_grad
        self._grads_buffer = (grads, flat16) if flat16 is not None else None
    if flat16 is not None and flat16.numel() == flat32.grad.numel():
        flat32.grad.data.copy_(flat16)
    else:
        torch._foreach_copy_(self._fp32_grad_views, grads)
    self._needs_sync = False


def sync_fp32_params_to_fp16(self) -> None:
    """FP16Optimizer._sync_fp32_params_to_fp16 (flat fp32 weights, one device) in one launch."""
    torch._foreach_copy_([p.data for p in self.fp16_params], self._fp32_weight_views)
