"""Square attack (Andriushchenko et al. 2020): score-based random search, linf (torchattacks.Square).

Only queries the target's forward: gradient modes do not apply (stored as mode 'query').
"""
from __future__ import annotations

from typing import Any

import torch
import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register, run_torchattack


@register
class Square(Attack):
    """Square: score-based black-box random search, 5000 queries (linf)."""

    name = "square"
    suite = "blackbox"
    uses_gradients = False
    default_steps = 5000  # queries

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "queries": self.steps, "p_init": 0.8, "loss": "margin", "restarts": 1}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        atk = torchattacks.Square(
            model, norm="Linf", eps=eps, n_queries=self.steps, n_restarts=1, p_init=0.8, seed=self.seed, loss="margin"
        )
        with torch.no_grad():  # score-based: no autograd graph needed (Square builds one otherwise)
            return run_torchattack(atk, x, y)
