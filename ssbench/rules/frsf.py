"""Fixed random-magnitude sign-concordant feedback: B = |R| * sign(W), R fixed.

|R| is drawn at conversion and scaled so that || |R| * sign(W_0) || = ||W_0||; the magnitudes stay
fixed while the signs follow W during training.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ssbench.rules.base import RULES, Rule, draw_normal


@RULES.register("frsf", help="fixed random-magnitude sign feedback, B = |R| sign(W)")
class FixedRandomSignFeedback(Rule):
    name = "frsf"

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor:
        r = draw_normal(weight.shape, weight, gen).abs()
        w = weight.detach()
        return r * (w.norm() / (r * w.sign()).norm().clamp_min(1e-30))

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state * layer.weight.detach().sign()
