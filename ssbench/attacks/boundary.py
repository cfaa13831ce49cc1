"""Boundary attack (Brendel et al. 2018), decision-based, minimum L2 (foolbox.attacks.BoundaryAttack).

It minimises the L2 distance; we read the L-inf distance of what it finds, so its L-inf curve is a
valid (not tight) upper bound on robust accuracy.
"""
from __future__ import annotations

from typing import Any

import foolbox as fb
import torch
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register
from ssbench.attacks.starting import predict, starting_points


def run_foolbox(model: nn.Module, attack: Any, x: Tensor, y: Tensor, pool_x: Tensor, pool_y: Tensor):  # noqa: ANN201
    """Run a foolbox minimisation attack from our per-example starting points; returns (adv, linf)."""
    start, found = starting_points(model, x, y, pool_x, pool_y)
    adv = x.clone()
    dist = torch.full((len(x),), float("inf"), device=x.device)
    idx = found.nonzero().flatten()
    if len(idx) == 0:
        return adv, dist
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    crit = fb.criteria.Misclassification(y[idx])
    out = attack.run(fmodel, x[idx], crit, starting_points=start[idx])
    out = out.raw if hasattr(out, "raw") else out
    out = torch.as_tensor(out).clamp(0, 1)
    adv[idx] = out
    is_adv = predict(model, adv[idx]) != y[idx]  # verified on the model, not taken from foolbox
    d = (adv[idx] - x[idx]).flatten(1).abs().amax(1)
    dist[idx] = torch.where(is_adv, d, torch.full_like(d, float("inf")))
    return adv, dist


@register
class Boundary(Attack):
    """Boundary: decision-based random walk along the decision boundary, minimum L2 (black-box)."""

    name = "boundary"
    suite = "blackbox"
    uses_gradients = False
    minimum_norm = True
    default_steps = 1000

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "minimises": "l2", "measured": "linf", "starting_points": "per-example"}

    def _min_distance(self, model, x, y, pool_x, pool_y):  # noqa: ANN001, ANN202
        atk = fb.attacks.BoundaryAttack(steps=self.steps, tensorboard=False)
        return run_foolbox(model, atk, x, y, pool_x, pool_y)
