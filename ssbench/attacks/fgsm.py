"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps (torchattacks.FGSM)."""
from __future__ import annotations

import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register, run_torchattack


@register
class FGSM(Attack):
    """FGSM: single signed-gradient step of size eps (linf, white-box)."""

    name = "fgsm"
    suite = "whitebox"
    single_step = True

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        return run_torchattack(torchattacks.FGSM(model, eps=eps), x, y)
