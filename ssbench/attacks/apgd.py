"""Auto-PGD (Croce & Hein 2020) with the CE and the DLR loss (torchattacks.APGD), and its targeted
DLR version APGD-T (torchattacks.APGDT).

torchattacks defaults APGD, APGD-T (and its AutoAttack) to 10 steps; the official AutoAttack uses
100. We default to 100 and store the value with every point. APGD-T attacks the top
min(9, classes - 1) other classes in turn (AutoAttack's standard), one restart each.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, num_classes, register, run_torchattack


class _APGD(Attack):
    suite = "whitebox"
    default_steps = 100
    compared_with = "fgsm"  # sanity check iterative_le_single_step
    loss: ClassVar[str]

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "loss": self.loss, "restarts": 1, "rho": 0.75}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        atk = torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1, seed=self.seed, loss=self.loss, rho=0.75
        )
        return run_torchattack(atk, x, y)


@register
class APGDCE(_APGD):
    """APGD-CE: step-size-free PGD on cross-entropy, 100 steps (white-box, linf)."""

    name = "apgd-ce"
    loss = "ce"


@register
class APGDDLR(_APGD):
    """APGD-DLR: APGD on the scale-invariant difference-of-logits-ratio loss (white-box, linf)."""

    name = "apgd-dlr"
    loss = "dlr"


@register
class APGDT(Attack):
    """APGD-T: targeted APGD on the DLR loss, the top 9 other classes in turn, 100 steps each (white-box, linf)."""

    name = "apgd-t"
    suite = "whitebox"
    default_steps = 100
    min_classes = 4  # the targeted DLR loss reads the 3rd and 4th largest logits
    TARGETS = 9
    doubling_check = False  # 9 targeted runs: doubling them costs more than the check is worth

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "loss": "dlr-targeted", "restarts": 1, "rho": 0.75,
                "target_classes": self.TARGETS}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        k = num_classes(model, x)
        # torchattacks attacks n_classes - 1 targets: cap at AutoAttack's 9
        atk = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1, seed=self.seed,
                                 rho=0.75, n_classes=min(k, self.TARGETS + 1))
        return run_torchattack(atk, x, y)
