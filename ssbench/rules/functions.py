"""Autograd functions: ordinary forward, feedback tensor B in the input-gradient path.

One function per op kind. The weight and bias gradients are the ordinary ones (they depend on the
input and the upstream error only), so a rule changes exactly one thing: which tensor carries the
error to the layer's input. Each backward costs the same products as autograd's own.

Mixed precision: under torch.autocast the forward computes in the autocast dtype (bf16 / fp16) as
F.linear / F.conv2d would, and saves the input in that dtype; the backward re-enters the forward's
autocast state (what torch.amp.custom_fwd / custom_bwd do, for whichever device the layer runs on),
casts B (and DFA's e and B_l) to that dtype, and returns each gradient in the dtype of the tensor
it belongs to (fp32 master weights get fp32 gradients), exactly as autograd's casts would. Without
autocast nothing is cast: fp32 and fp64 results are those of the plain products.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

AutocastState = tuple[str, bool, torch.dtype] | None


def autocast_state(x: Tensor) -> AutocastState:
    """(device type, enabled, dtype) of autocast for x's device, None where the device has none."""
    device = x.device.type
    # cpu and cuda always have autocast; asking only for other devices keeps torch.compile to one
    # graph on torch versions whose dynamo cannot trace is_autocast_available (2.11 cannot)
    if device not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device):
        return None
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def autocast_cast(t: Tensor, state: AutocastState) -> Tensor:
    """t in the autocast dtype where autocast would cast it (a floating tensor, never float64)."""
    if state is None or not state[1] or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(state[2])


def autocast_like(state: AutocastState) -> Any:
    """A context that re-enters the forward's autocast state in backward (enabled or not, whatever
    autocast state the backward is called in). Where autocast is off in both, no context at all:
    entering one costs more than a small layer's backward products."""
    if state is None or (not state[1] and not torch.is_autocast_enabled(state[0])):
        return nullcontext()
    return torch.autocast(state[0], dtype=state[2], enabled=state[1])


def _like_strides(grad: Tensor | None, stride: tuple[int, ...]) -> Tensor | None:
    """The weight gradient laid out as the weight is. cuDNN may return other strides where a dimension
    has size 1 (a one-channel input: the same values either way), and DistributedDataParallel then
    copies every gradient into its bucket, with a warning, on each step."""
    if grad is None or grad.stride() == stride:
        return grad
    return torch.empty_strided(grad.shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def _cast(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)


class FeedbackLinearFn(Function):
    """y = x W^T + b;  dL/dx = g B  (B has W's shape, out x in); dL/dW = g^T x."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, feedback: Tensor | DirectFeedback, bias: Tensor | None
    ) -> Tensor:
        ctx.autocast = autocast_state(x)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        x = autocast_cast(x, ctx.autocast)  # saved as the product uses it (half the memory in bf16)
        ctx.save_for_backward(x, feedback if isinstance(feedback, Tensor) else None)
        ctx.direct = None if isinstance(feedback, Tensor) else feedback
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_x = grad_w = grad_b = None
        with autocast_like(ctx.autocast):
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # any leading batch dims
            if ctx.needs_input_grad[0]:
                if ctx.direct is not None:
                    grad_x = ctx.direct.input_grad(x.shape, grad_out.dtype)
                else:
                    grad_x = (g2 @ _cast(feedback, g2.dtype)).view(x.shape)
            if ctx.needs_input_grad[1]:
                grad_w = g2.t() @ x.reshape(-1, x.shape[-1])
            if ctx.has_bias and ctx.needs_input_grad[3]:
                grad_b = g2.sum(0)
        return _cast(grad_x, x_dtype), _cast(grad_w, w_dtype), None, _cast(grad_b, b_dtype)


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
    ) -> Tensor:
        ctx.autocast = autocast_state(x)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.w_stride = weight.stride()
        ctx.in_shape = x.shape  # the layer's real input (before any pre_pad)
        x = autocast_cast(x, ctx.autocast)
        if pre_pad is not None:
            x = F.pad(x, pre_pad[0], mode=pre_pad[1])
        ctx.save_for_backward(x, feedback if isinstance(feedback, Tensor) else weight)
        ctx.direct = None if isinstance(feedback, Tensor) else feedback
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]])
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups, bias_sizes = ctx.conf
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        need_x = ctx.needs_input_grad[0]
        mask = [need_x and ctx.direct is None, ctx.needs_input_grad[1],
                bias_sizes is not None and ctx.needs_input_grad[3]]
        with autocast_like(ctx.autocast):
            # One fused call: aten's conv backward computes grad_input from the tensor passed as
            # weight (here B) and grad_weight from (x, grad_out) alone -- exactly the rule's semantics.
            # It is on no autocast list, so every operand is given in grad_out's dtype by hand.
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, _cast(feedback, grad_out.dtype), bias_sizes, list(stride), list(padding),
                list(dilation), False, [0, 0], groups, mask,
            )
            if need_x and ctx.direct is not None:
                grad_x = ctx.direct.input_grad(ctx.in_shape, grad_out.dtype)
        return (_cast(grad_x, x_dtype), _like_strides(_cast(grad_w, w_dtype), ctx.w_stride), None, _cast(grad_b, b_dtype),
                None, None, None, None, None)


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
        return (e.to(dtype) @ matrix.to(dtype)).view(x_shape)


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
