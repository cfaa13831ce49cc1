"""Backpropagation: B = W (weight transport). Kept as a rule so BP runs through the same engine."""
from __future__ import annotations

from torch import Tensor

from ssbench.rules.base import RULES, Rule


@RULES.register("bp", help="backpropagation, B = W")
class Backprop(Rule):
    name = "bp"

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.weight.detach()
