"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps.

``loss="ce"`` (default, what the papers used) runs torchattacks.FGSM; ``loss="margin"`` takes the
same step on the CW margin, which does not saturate on over-confident models (see ``losses.py``).
"""
from __future__ import annotations

import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, eval_guard, register, run_torchattack
from ssbench.attacks.losses import LOSSES, signed_gradient


@register
class FGSM(Attack):
    """FGSM: single signed-gradient step of size eps (linf, white-box)."""

    name = "fgsm"
    suite = "whitebox"
    single_step = True
    loss_choices = LOSSES

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        if self.loss == "ce":
            return run_torchattack(torchattacks.FGSM(model, eps=eps), x, y)
        return (x + eps * signed_gradient(model, x, y, self.loss)).clamp(0, 1)

    def direction(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # for CE the same computation as torchattacks.FGSM: sign of d CE(mean) / dx
        with eval_guard(model):
            return signed_gradient(model, x, y, self.loss)
