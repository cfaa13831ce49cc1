"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps (torchattacks.FGSM)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, eval_guard, register, run_torchattack


@register
class FGSM(Attack):
    """FGSM: single signed-gradient step of size eps (linf, white-box)."""

    name = "fgsm"
    suite = "whitebox"
    single_step = True

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        return run_torchattack(torchattacks.FGSM(model, eps=eps), x, y)

    def direction(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # the same computation as torchattacks.FGSM: sign of d CE(mean) / dx
        with eval_guard(model), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
        return grad.sign()
