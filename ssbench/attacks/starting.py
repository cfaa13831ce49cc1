"""Starting points for decision-based attacks, found per example.

foolbox's Boundary and HopSkipJump raise for the *whole batch* when their default initialisation
(blended uniform noise) fails for a single image. We hand them a starting point per example: a
test image the target classifies as another class than the example's label, pulled towards the
example by bisection on the blend line (1 - a) x + a s while it stays adversarial.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def starting_points(
    model: nn.Module, x: Tensor, y: Tensor, pool_x: Tensor, pool_y: Tensor, *, bisections: int = 12
) -> tuple[Tensor, Tensor]:
    """(points, found): ``points[i]`` is misclassified by ``model`` (pred != y[i]) where ``found[i]``."""
    pool_pred = predict(model, pool_x)
    points = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(len(x)):
        cand = (pool_pred != y[i]).nonzero().flatten()
        if len(cand) == 0:
            continue
        points[i] = pool_x[cand[0]]
        found[i] = True
    if not found.any():
        return points, found
    # Bisection on the blend factor a in [0, 1]: a = 1 is the pool image (adversarial), a = 0 the example.
    lo = torch.zeros(len(x), device=x.device)
    hi = torch.ones(len(x), device=x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(bisections):
        mid = (lo + hi) / 2
        blend = (1 - mid.view(shape)) * x + mid.view(shape) * points
        adv = predict(model, blend) != y
        hi = torch.where(adv, mid, hi)
        lo = torch.where(adv, lo, mid)
    final = (1 - hi.view(shape)) * x + hi.view(shape) * points
    ok = predict(model, final) != y  # hi always stays adversarial, but check: no silent bad start
    points = torch.where((found & ok).view(shape), final, points)
    return points, found
