"""Feedback alignment (Lillicrap et al. 2016): B = R, a fixed random tensor.

R is drawn at conversion and scaled to ||R|| = ||W_0||, the norm of the *converted* (pretrained)
weight: drawing it with a fresh init scale instead (BioTorch: xavier) gives pseudo-gradients whose
size has nothing to do with the pretrained network's and can blow up by orders of magnitude. A
zero W_0 (torchvision's ViT head) takes the init scale of its shape instead (see `reference_rms`).
With init='xavier' R is BioTorch's: a xavier_uniform_ draw of W's shape, whatever W's scale; with
init='gaussian' R ~ N(0, feedback_var / fan_in), not rescaled to ||W|| (the trainability map's axis).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ssbench.rules.base import RULES, Rule, draw_at_weight_norm


@RULES.register("fa", help="feedback alignment, fixed random B scaled to ||W|| (init xavier: xavier-uniform B)")
class FeedbackAlignment(Rule):
    name = "fa"

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor:
        return self.draw(weight, gen) if self.shape_scaled else draw_at_weight_norm(weight, gen)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state
