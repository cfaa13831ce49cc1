"""One-time soft alignment (IFA): B fixed, set once so that angle(W_0, B) = theta exactly.

B = ||W_0|| (cos(theta) w + sin(theta) u), with w = W_0/||W_0|| and u a random unit tensor made
orthogonal to w (Gram-Schmidt in float64). theta = 0 gives B = W_0 (BP at the start), theta = 90
gives a random B orthogonal to W_0 with its norm (FA-like); ||B|| = ||W_0|| for every theta.
A zero W_0 has no direction to keep an angle to (and ||W_0|| = 0 would give 0/0): B is then the
random unit tensor u at the init norm of W's shape (see `reference_rms`), whatever theta.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ssbench.errors import SpecError
from ssbench.rules.base import RULES, Init, Rule, draw_normal, init_rms


@RULES.register("ifa", help="one-time soft alignment: fixed B at angle theta to the initial W")
class InitialFeedbackAlignment(Rule):
    name = "ifa"

    def __init__(self, theta: float = 45.0, init: Init = "default", weight_var: float | None = None,
                 feedback_var: float | None = None) -> None:
        # xavier / gaussian only re-initialise W from scratch: B still follows W_0 (no feedback_var)
        super().__init__(init, weight_var, feedback_var)
        if not 0.0 <= theta <= 180.0:
            raise SpecError(f"ifa theta must be in [0, 180] degrees, got {theta}")
        self.theta = float(theta)

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor:
        w = weight.detach().to(device="cpu", dtype=torch.float64).flatten()
        u = draw_normal(w.shape, w, gen)  # float32 draw, cast: the same u in every precision
        norm = w.norm()
        if norm == 0:
            b = u * (init_rms(weight) * math.sqrt(w.numel()) / u.norm())
        else:
            w_hat = w / norm
            u = u - (u @ w_hat) * w_hat
            u = u - (u @ w_hat) * w_hat  # second pass: orthogonal to machine precision
            u_hat = u / u.norm()
            t = math.radians(self.theta)
            b = norm * (math.cos(t) * w_hat + math.sin(t) * u_hat)
        return b.view(weight.shape).to(device=weight.device, dtype=weight.dtype)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state

    def config(self) -> dict[str, float | int | str | None]:
        return {**super().config(), "theta": self.theta}
