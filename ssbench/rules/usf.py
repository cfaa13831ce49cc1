"""Uniform sign-concordant feedback (Liao et al. 2016; Xiao et al. 2018): B = s * sign(W).

s = rms(W) of the current weight, so ||B|| = ||W|| (for W without zeros) at every step: the rule
stays stateless and its scale follows the converted W, whatever W's init was. Entries where W is
exactly 0 get B = 0 (sign(0) = 0), and an all-zero W gives B = 0: the rule's only source of
feedback is W's sign, and inventing one would no longer be sign-symmetric feedback.
With init='xavier' s is BioTorch's: the std of xavier_uniform_ for W's shape, sqrt(2/(fan_in+fan_out)),
a constant of the layer's shape that does not follow W; with init='gaussian' s = sqrt(feedback_var / fan_in).
"""
from __future__ import annotations

from torch import Tensor

from ssbench.rules.base import RULES, Rule, rms


@RULES.register("usf", help="uniform sign-concordant feedback, B = rms(W) sign(W) (init xavier: xavier std)")
class UniformSignFeedback(Rule):
    name = "usf"

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        w = layer.weight.detach()
        return w.sign().mul_(self.shape_std(w) if self.shape_scaled else rms(w))
