"""One-time soft alignment (IFA): B fixed, set once so that angle(W_0, B) = theta exactly.

B = ||W_0|| (cos(theta) w + sin(theta) u), with w = W_0/||W_0|| and u a random unit tensor made
orthogonal to w (Gram-Schmidt in float64). theta = 0 gives B = W_0 (BP at the start), theta = 90
gives a random B orthogonal to W_0 with its norm (FA-like); ||B|| = ||W_0|| for every theta.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ssbench.rules.base import RULES, Rule


@RULES.register("ifa", help="one-time soft alignment: fixed B at angle theta to the initial W")
class InitialFeedbackAlignment(Rule):
    name = "ifa"

    def __init__(self, theta: float = 45.0) -> None:
        if not 0.0 <= theta <= 180.0:
            raise ValueError(f"ifa theta must be in [0, 180] degrees, got {theta}")
        self.theta = float(theta)

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor:
        w = weight.detach().to(torch.float64).flatten().cpu()
        norm = w.norm()
        w_hat = w / norm
        u = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        u = u - (u @ w_hat) * w_hat
        u = u - (u @ w_hat) * w_hat  # second pass: orthogonal to machine precision
        u_hat = u / u.norm()
        t = math.radians(self.theta)
        b = norm * (math.cos(t) * w_hat + math.sin(t) * u_hat)
        return b.view(weight.shape).to(device=weight.device, dtype=weight.dtype)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state

    def config(self) -> dict[str, float | int | str | None]:
        return {"name": self.name, "theta": self.theta}
