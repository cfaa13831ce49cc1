"""FAB-T (Croce & Hein 2020), targeted, linf (torchattacks.FAB with multi_targeted=True).

FAB is a minimum-norm attack that moves along the linearised decision boundary; its targeted
version attacks the top min(9, classes - 1) other classes in turn. Within a budget eps it returns,
per example, the first adversarial it finds with linf distance <= eps (else the clean image).
torchattacks defaults to 10 steps; AutoAttack's standard uses 100, which we default to.
"""
from __future__ import annotations

from typing import Any

import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, num_classes, register, run_torchattack


@register
class FABT(Attack):
    """FAB-T: targeted fast adaptive boundary attack, top 9 other classes, 100 steps each (white-box, linf)."""

    name = "fab-t"
    suite = "whitebox"
    default_steps = 100
    TARGETS = 9
    doubling_check = False  # 9 targeted runs: doubling them costs more than the check is worth

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "restarts": 1, "target_classes": self.TARGETS, "alpha_max": 0.1,
                "eta": 1.05, "beta": 0.9}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        k = num_classes(model, x)
        atk = torchattacks.FAB(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1, alpha_max=0.1, eta=1.05,
                               beta=0.9, seed=self.seed, multi_targeted=True, n_classes=min(k, self.TARGETS + 1))
        return run_torchattack(atk, x, y)
