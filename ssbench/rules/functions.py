"""Autograd functions: ordinary forward, feedback tensor B in the input-gradient path.

One function per op kind. The weight and bias gradients are the ordinary ones (they depend on the
input and the upstream error only), so a rule changes exactly one thing: which tensor carries the
error to the layer's input. Each backward costs the same products as autograd's own.

Mixed precision: under torch.autocast the forward computes in the autocast dtype (bf16 / fp16) as
F.linear / F.conv2d would, and saves the input in that dtype (the layer passes the dtype, and B
already cast to it). The backward computes every product in grad_out's dtype, which is that compute
dtype, with each operand cast by hand, whatever autocast block loss.backward() sits in; autograd
returns each gradient in the dtype of the tensor it belongs to (fp32 master weights get fp32
gradients), as it does for its own ops. Without autocast nothing is cast: fp32 and fp64 results are
those of the plain products.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

_NO_CONTEXT = nullcontext()


def _any_autocast() -> bool:
    """Whether autocast may be on for some device: one C call, the common fp32 case's whole cost.
    Under torch.compile the per-device questions are asked instead (dynamo traces those)."""
    return torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled()


def _autocast_device(t: Tensor) -> str | None:
    """t's device type where autocast is on for it, else None."""
    if not _any_autocast():
        return None
    device = t.device.type
    # cpu and cuda always have autocast; asking only for other devices keeps torch.compile to one
    # graph on torch versions whose dynamo cannot trace is_autocast_available (2.11 cannot)
    if device not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device):
        return None
    return device if torch.is_autocast_enabled(device) else None


def compute_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast computes ops on x in, or None where it changes nothing: autocast off for
    x's device (or the device has none), or x not floating or float64 (autocast leaves those)."""
    if not x.is_floating_point() or x.dtype == torch.float64:
        return None
    device = _autocast_device(x)
    dtype = None if device is None else torch.get_autocast_dtype(device)
    return None if dtype == x.dtype else dtype


def outside_autocast(t: Tensor) -> Any:
    """A backward computes in the dtypes it is handed (the forward's, cast by hand): an autocast
    block around loss.backward() must not recast its products. No context at all where autocast is
    off (entering one costs more than a small layer's backward)."""
    device = _autocast_device(t)
    return _NO_CONTEXT if device is None else torch.autocast(device, enabled=False)


def _like_strides(grad: Tensor | None, stride: tuple[int, ...]) -> Tensor | None:
    """The weight gradient laid out as the weight is. cuDNN may return other strides where a dimension
    has size 1 (a one-channel input: the same values either way), and DistributedDataParallel then
    copies every gradient into its bucket, with a warning, on each step."""
    if grad is None or grad.stride() == stride:
        return grad
    return torch.empty_strided(grad.shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


# Host cost: on a GPU a ResNet step in bf16 is bound by the host's Python, so these Functions do as
# little per call as they can: no autocast context (operands are cast by hand, so backward needs
# none), no casts of the returned gradients (autograd casts each to its input's dtype itself, as it
# does for its own ops), and B arrives already in the compute dtype (the layer casts it, and keeps
# the cast of a fixed B). benchmarks/host_overhead.py measures it.


class FeedbackLinearFn(Function):
    """y = x W^T + b;  dL/dx = g B  (B has W's shape, out x in); dL/dW = g^T x."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, feedback: Tensor | DirectFeedback, bias: Tensor | None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        if dtype is not None:
            x = x.to(dtype)  # saved as the product uses it (half the memory in bf16)
        direct = not isinstance(feedback, Tensor)
        ctx.save_for_backward(x, None if direct else feedback)
        ctx.direct = feedback if direct else None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        need_x, need_w, _, need_b, _ = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        with outside_autocast(grad_out):
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # any leading batch dims
            if need_x:
                if ctx.direct is not None:
                    grad_x = ctx.direct.input_grad(x.shape, grad_out.dtype)
                else:
                    grad_x = (g2 @ _cast(feedback, g2.dtype)).view(x.shape)
            if need_w:
                grad_w = g2.t() @ _cast(x, g2.dtype).reshape(-1, x.shape[-1])
            if need_b:
                grad_b = g2.sum(0)
        return grad_x, grad_w, None, grad_b, None


class FeedbackConv2dFn(Function):
    """Ordinary conv2d forward; input gradient is the transposed convolution of g with B.

    `pre_pad` = (F.pad widths, mode) pads x inside the function (DFA only: its input gradient goes
    straight to the unpadded input, with no pad backward folding border positions together).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        feedback: Tensor | DirectFeedback,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        pre_pad: tuple[tuple[int, ...], str] | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        in_shape = x.shape  # the layer's real input (before any pre_pad)
        if dtype is not None:
            x = x.to(dtype)
        if pre_pad is not None:
            x = F.pad(x, pre_pad[0], mode=pre_pad[1])
        direct = not isinstance(feedback, Tensor)
        ctx.save_for_backward(x, weight if direct else feedback)
        ctx.direct = feedback if direct else None
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]],
                    weight.stride(), in_shape)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups, bias_sizes, w_stride, in_shape = ctx.conf
        need_x, need_w, _, need_b = ctx.needs_input_grad[:4]
        direct = ctx.direct
        mask = [need_x and direct is None, need_w, bias_sizes is not None and need_b]
        with outside_autocast(grad_out):
            # One fused call: aten's conv backward computes grad_input from the tensor passed as
            # weight (here B) and grad_weight from (x, grad_out) alone -- exactly the rule's semantics.
            # It is on no autocast list, so every operand is given in grad_out's dtype by hand.
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward.default(
                grad_out, _cast(x, grad_out.dtype), _cast(feedback, grad_out.dtype), bias_sizes,
                stride, padding, dilation, False, [0, 0], groups, mask,
            )
            if need_x and direct is not None:
                grad_x = direct.input_grad(in_shape, grad_out.dtype)
        return (grad_x, _like_strides(grad_w, w_stride), None, grad_b, None, None, None, None, None, None)


class DirectFeedback:
    """DFA feedback of one layer: dL/dx := (e B_l) reshaped to x, e = dL/d(model output).

    B_l has shape (output size, prod(x.shape[1:])); e comes from the model's ErrorBox, filled by
    CaptureErrorFn, whose backward runs before any layer's because it is the last op of forward.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer  # a FeedbackLayer; B_l is drawn on first use, when e's size is known

    def input_grad(self, x_shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """e B_l in `dtype` (the layer's compute dtype: e and B_l are cast to it, B_l stays stored
        in the weight's dtype, so state dicts never change dtype under autocast)."""
        box = self.layer.error_box
        e = None if box is None else box.error
        if e is None or e.shape[0] != x_shape[0]:
            raise RuntimeError(
                "dfa: no output error captured for this backward; compute the loss from the "
                "converted model's own output"
            )
        in_size = 1
        for d in x_shape[1:]:
            in_size *= d
        in_hw = (int(x_shape[-2]), int(x_shape[-1])) if len(x_shape) == 4 else None  # a conv's input map
        matrix = self.layer.ensure_direct_matrix(e.shape[1], in_size, in_hw)
        return (_cast(e, dtype) @ self.layer.state_in_dtype(matrix, dtype)).view(x_shape)


class ErrorBox:
    """Holds e = dL/d(output) of the current backward pass for a DFA-converted model."""

    def __init__(self) -> None:
        self.error: Tensor | None = None


class CaptureErrorFn(Function):
    """Identity on the model output whose backward stores e before any layer's backward runs.
    e keeps the output's dtype (each layer casts it to its own compute dtype)."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, error_box: ErrorBox) -> Tensor:
        ctx.box = error_box
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.box.error = grad.reshape(grad.shape[0], -1).detach()
        return grad, None
