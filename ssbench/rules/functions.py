"""Autograd functions: ordinary forward, feedback tensor B in the input-gradient path.

One function per op kind. The weight and bias gradients are the ordinary ones (they depend on the
input and the upstream error only), so a rule changes exactly one thing: which tensor carries the
error to the layer's input. Each backward costs the same products as autograd's own.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function


class FeedbackLinearFn(Function):
    """y = x W^T + b;  dL/dx = g B  (B has W's shape, out x in); dL/dW = g^T x."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, feedback: Tensor | DirectFeedback, bias: Tensor | None
    ) -> Tensor:
        ctx.save_for_backward(x, feedback if isinstance(feedback, Tensor) else None)
        ctx.direct = None if isinstance(feedback, Tensor) else feedback
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])  # any leading batch dims
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.direct is not None:
                grad_x = ctx.direct.input_grad(x.shape, grad_out.dtype)
            else:
                grad_x = (g2 @ feedback.to(g2.dtype)).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = g2.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, None, grad_b


class FeedbackConv2dFn(Function):
    """Ordinary conv2d forward; input gradient is the transposed convolution of g with B."""

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
    ) -> Tensor:
        ctx.save_for_backward(x, feedback if isinstance(feedback, Tensor) else weight)
        ctx.direct = None if isinstance(feedback, Tensor) else feedback
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]])
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups, bias_sizes = ctx.conf
        need_x = ctx.needs_input_grad[0]
        mask = [need_x and ctx.direct is None, ctx.needs_input_grad[1],
                bias_sizes is not None and ctx.needs_input_grad[3]]
        # One fused call: aten's conv backward computes grad_input from the tensor passed as weight
        # (here B) and grad_weight from (x, grad_out) alone -- exactly the rule's semantics.
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, feedback.to(grad_out.dtype), bias_sizes, list(stride), list(padding),
            list(dilation), False, [0, 0], groups, mask,
        )
        if need_x and ctx.direct is not None:
            grad_x = ctx.direct.input_grad(x.shape, grad_out.dtype)
        return grad_x, grad_w, None, grad_b, None, None, None, None


class DirectFeedback:
    """DFA feedback of one layer: dL/dx := (e B_l) reshaped to x, e = dL/d(model output).

    B_l has shape (output size, prod(x.shape[1:])); e comes from the model's ErrorBox, filled by
    CaptureErrorFn, whose backward runs before any layer's because it is the last op of forward.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer  # a FeedbackLayer; B_l is drawn on first use, when e's size is known

    def input_grad(self, x_shape: torch.Size, dtype: torch.dtype) -> Tensor:
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
    """Identity on the model output whose backward stores e before any layer's backward runs."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, error_box: ErrorBox) -> Tensor:
        ctx.box = error_box
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.box.error = grad.reshape(grad.shape[0], -1).detach()
        return grad, None
