"""HopSkipJump (Chen et al. 2020), decision-based, L-inf (foolbox.attacks.HopSkipJumpAttack)."""
from __future__ import annotations

from typing import Any

import foolbox as fb

from ssbench.attacks.base import Attack, register
from ssbench.attacks.boundary import run_foolbox


@register
class HopSkipJump(Attack):
    """HopSkipJump: decision-based gradient estimation at the boundary, minimum linf (black-box)."""

    name = "hsj"
    suite = "blackbox"
    uses_gradients = False
    minimum_norm = True
    default_steps = 20

    def params(self, eps: float) -> dict[str, Any]:
        return {
            **super().params(eps),
            "constraint": "linf",
            "initial_gradient_eval_steps": 100,
            "max_gradient_eval_steps": 1000,
            "starting_points": "per-example",
        }

    def _min_distance(self, model, x, y, pool_x, pool_y):  # noqa: ANN001, ANN202
        atk = fb.attacks.HopSkipJumpAttack(
            steps=self.steps, constraint="linf", initial_gradient_eval_steps=100, max_gradient_eval_steps=1000
        )
        return run_foolbox(model, atk, x, y, pool_x, pool_y)
