"""Feedback alignment (Lillicrap et al. 2016): B = R, a fixed random tensor.

R is drawn at conversion and scaled to ||R|| = ||W_0||, the norm of the *converted* (pretrained)
weight: drawing it with a fresh init scale instead (BioTorch: xavier) gives pseudo-gradients whose
size has nothing to do with the pretrained network's and can blow up by orders of magnitude. A
zero W_0 (torchvision's ViT head) takes the init scale of its shape instead (see `reference_rms`).
With init='xavier' R is BioTorch's: a xavier_uniform_ draw of W's shape, whatever W's scale.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ssbench.rules.base import RULES, Rule, draw_at_weight_norm, draw_xavier


@RULES.register("fa", help="feedback alignment, fixed random B scaled to ||W|| (init xavier: xavier-uniform B)")
class FeedbackAlignment(Rule):
    name = "fa"

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor:
        return draw_xavier(weight, gen) if self.xavier else draw_at_weight_norm(weight, gen)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state
