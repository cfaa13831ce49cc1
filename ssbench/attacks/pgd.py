"""PGD (Madry et al. 2018), linf, uniform random start.

``loss="ce"`` (default, what the papers used) runs torchattacks.PGD. torchattacks has no custom-loss
hook, so ``loss="margin"`` runs ``pgd_linf`` below: the same random start, step and projection as
torchattacks.PGD (tested step for step against it with the CE loss), ascending the CW margin.
"""
from __future__ import annotations

from typing import Any

import torch
import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register, run_torchattack
from ssbench.attacks.losses import LOSSES, attack_loss


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, loss: str) -> Tensor:
    """Untargeted linf PGD with a uniform random start in the eps-ball, images kept in [0, 1]."""
    x = x.detach()
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(attack_loss(loss, model(adv), y), adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return adv


@register
class PGD(Attack):
    """PGD-40: linf projected gradient descent, random start, step 2.5*eps/steps (white-box)."""

    name = "pgd"
    suite = "whitebox"
    default_steps = 40
    compared_with = "fgsm"  # sanity check iterative_le_single_step
    loss_choices = LOSSES

    def step_size(self, eps: float) -> float:
        # Madry et al.'s rule: the walk can cross the ball 2.5 times in `steps` steps.
        return 2.5 * eps / self.steps

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "step_size": self.step_size(eps), "random_start": True, "restarts": 1}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        if self.loss == "ce":
            atk = torchattacks.PGD(model, eps=eps, alpha=self.step_size(eps), steps=self.steps, random_start=True)
            return run_torchattack(atk, x, y)
        return pgd_linf(model, x, y, eps, self.step_size(eps), self.steps, self.loss)
