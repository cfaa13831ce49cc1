"""Fixed random-magnitude sign-concordant feedback: B = |R| * sign(W), R fixed.

R is drawn at conversion and scaled so that ||B_0|| = ||W_0|| (every entry of B has magnitude |R|,
so ||B|| = ||R|| at every step); the magnitudes stay fixed while the signs follow W. The stored R
keeps its own sign, used only where W is exactly 0: sign(0) = 0 would zero those entries, and a
zero-initialised layer (torchvision's ViT head) would pass no error down at all.
With init='xavier' R is BioTorch's xavier_uniform_ draw of W's shape (|R| <= sqrt(6/(fan_in+fan_out)));
with init='gaussian' R ~ N(0, feedback_var / fan_in), not rescaled.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ssbench.rules.base import RULES, Rule, draw_at_weight_norm


@RULES.register("frsf", help="fixed random-magnitude sign feedback, B = |R| sign(W)")
class FixedRandomSignFeedback(Rule):
    name = "frsf"

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor:
        return self.draw(weight, gen) if self.shape_scaled else draw_at_weight_norm(weight, gen)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        r, w = layer.feedback_state, layer.weight.detach()
        # 2 sign(W) + sign(R) has W's sign where W != 0 and R's where W == 0 (small integers: exact
        # in every dtype); one copysign then gives |R| sign(W). Twice as fast as a where on W == 0.
        return torch.copysign(r, torch.add(r.sign(), w.sign(), alpha=2))
