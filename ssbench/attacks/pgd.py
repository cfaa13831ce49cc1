"""PGD (Madry et al. 2018), linf, uniform random start (torchattacks.PGD)."""
from __future__ import annotations

from typing import Any

import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register, run_torchattack


@register
class PGD(Attack):
    """PGD-40: linf projected gradient descent, random start, step 2.5*eps/steps (white-box)."""

    name = "pgd"
    suite = "whitebox"
    default_steps = 40

    def step_size(self, eps: float) -> float:
        # Madry et al.'s rule: the walk can cross the ball 2.5 times in `steps` steps.
        return 2.5 * eps / self.steps

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "step_size": self.step_size(eps), "random_start": True, "restarts": 1}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        atk = torchattacks.PGD(model, eps=eps, alpha=self.step_size(eps), steps=self.steps, random_start=True)
        return run_torchattack(atk, x, y)
