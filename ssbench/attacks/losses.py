"""Attack losses selectable with ``--loss`` (FGSM, PGD): cross-entropy and the CW-style margin.

Cross-entropy saturates on over-confident models: once the logit gap exceeds ~17, float32
``log_softmax`` of the true class is exactly 0 and so is its input gradient, and sign(0) = 0 leaves
the image where it was. The margin max_{j != y} z_j - z_y (Carlini & Wagner 2017) is linear in the
logits, so its gradient J^T (e_j* - e_y) never vanishes for that reason.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AttackLoss = Literal["ce", "margin"]
LOSSES: tuple[AttackLoss, ...] = ("ce", "margin")


def _other_classes(logits: Tensor, y: Tensor) -> Tensor:
    """The logits with each example's true class masked to -inf."""
    return logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per example: max_{j != y} z_j - z_y (> 0 iff misclassified)."""
    return _other_classes(logits, y).amax(1) - logits.gather(1, y[:, None]).squeeze(1)


def runner_up(logits: Tensor, y: Tensor) -> Tensor:
    """j* = argmax_{j != y} z_j per example."""
    return _other_classes(logits, y).argmax(1)


def attack_loss(name: str, logits: Tensor, y: Tensor) -> Tensor:
    """The scalar an untargeted attack ascends. CE is the batch mean, as in torchattacks (the sign of
    the gradient, all FGSM/PGD use, is the same as for the sum); the margin is summed per example."""
    if name == "ce":
        return F.cross_entropy(logits, y)
    if name == "margin":
        return margin(logits, y).sum()
    raise ValueError(f"unknown attack loss {name!r}")


def signed_gradient(model: torch.nn.Module, x: Tensor, y: Tensor, loss: str) -> Tensor:
    """sign(d loss / dx) through ``model``'s autograd (whatever backward the gradient mode installed)."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(attack_loss(loss, model(xg), y), xg)
    return grad.sign()


def margin_cotangent(logits: Tensor, y: Tensor) -> Tensor:
    """v = e_{j*} - e_y per example, j* = argmax_{j != y} z_j: the direction CE's logit gradient
    softmax(z) - e_y takes (normalised) as the model grows confident, without its saturation."""
    c = logits.shape[1]
    return (F.one_hot(runner_up(logits, y), c) - F.one_hot(y, c)).to(logits.dtype)
