"""How far a rule's weight update is from the true gradient, layer by layer.

For every converted layer, the angle between dL/dW as the rule computes it (through the model's
own backward: errors reach hidden layers through B) and the true backprop gradient of the same
forward function on the same batch (inside :func:`ssbench.rules.exact_gradients`). 0 degrees for
bp, and for the last layer of every rule (its error is the exact output error); 90 degrees means
the update is orthogonal to the gradient (no first-order descent).

Both passes run in the same mode on the same batch. The default is eval mode (BatchNorm running
statistics, no dropout), so the two forwards are the identical function and the call has no side
effects. ``mode="train"`` uses batch statistics as training does; every buffer (BatchNorm running
statistics, brsf's step counter) is restored afterwards, so the call never changes the training
trajectory. Gradients are taken with ``torch.autograd.grad``: ``.grad`` fields are untouched.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.rules import exact_gradients, feedback_layers
from ssbench.rules.alignment import angle_deg


def _weights(model: nn.Module) -> list[tuple[str, Tensor]]:
    layers = feedback_layers(model)
    if layers:
        return [(name, layer.weight) for name, layer in layers]
    # an unconverted model learns by plain backprop: report its Linear / Conv2d layers (angle 0)
    return [(n, m.weight) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def gradient_alignment(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    *,
    mode: Literal["eval", "train"] = "eval",
) -> list[tuple[str, float]]:
    """[(layer name, angle in degrees between the rule's dL/dW and the true dL/dW)].

    NaN where either gradient is zero (e.g. a layer behind dead ReLUs on this batch)."""
    named = _weights(model)
    if not named:
        return []
    weights = [w for _, w in named]
    flags = [(m, m.training) for m in model.modules()]
    saved = {k: b.detach().clone() for k, b in model.named_buffers()}
    model.train(mode == "train")
    try:
        with torch.enable_grad():
            rule_grads = _grads(model, x, y, loss_fn, weights)
            with exact_gradients(model):
                true_grads = _grads(model, x, y, loss_fn, weights)
    finally:
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            current = dict(model.named_buffers())
            for k, v in saved.items():
                if k in current and current[k] is not None and current[k].shape == v.shape:
                    current[k].copy_(v)
    return [(name, angle_deg(r, t)) for (name, _), r, t in zip(named, rule_grads, true_grads)]


def _grads(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], weights: list[Tensor]) -> list[Tensor]:
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g.detach() for g, w in zip(grads, weights)]
