"""TPGD (Zhang et al. 2019, TRADES): PGD on KL(f(x) || f(x')) (torchattacks.TPGD)."""
from __future__ import annotations

from typing import Any

import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register, run_torchattack


@register
class TPGD(Attack):
    """TPGD: PGD maximising KL to the clean prediction, step 2.5*eps/steps (white-box, linf)."""

    name = "tpgd"
    suite = "whitebox"
    default_steps = 10
    compared_with = "fgsm"  # sanity check iterative_le_single_step

    def step_size(self, eps: float) -> float:
        return 2.5 * eps / self.steps

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "step_size": self.step_size(eps), "loss": "kl"}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        atk = torchattacks.TPGD(model, eps=eps, alpha=self.step_size(eps), steps=self.steps)
        return run_torchattack(atk, x, y)
