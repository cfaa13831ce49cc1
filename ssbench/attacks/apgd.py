"""Auto-PGD (Croce & Hein 2020) with the CE and the DLR loss (torchattacks.APGD).

torchattacks defaults APGD (and its AutoAttack) to 10 steps; the official AutoAttack uses 100.
We default to 100 and store the value with every point.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register, run_torchattack


class _APGD(Attack):
    suite = "whitebox"
    default_steps = 100
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
