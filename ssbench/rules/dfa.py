"""Direct feedback alignment (Nokland 2016): every layer's input receives B_l e directly.

e = dL/d(model output). B_l, of shape (output size, input size of the layer), is fixed random with
entries N(0, rms(W_l)^2): the per-entry scale of the converted weight, so the broadcast error has the
size a BP error through W_l would have (a zero W_l takes the init scale of its shape, see
`reference_rms`). Because B_l's shape depends on the layer's input size, it is drawn lazily at the
first backward from a per-layer seeded generator (the same B_l whenever it is drawn) and restored
from checkpoints by shape.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ssbench.rules.base import RULES, Rule, draw_normal, reference_rms


@RULES.register("dfa", help="direct feedback alignment: hidden layers receive B_l e")
class DirectFeedbackAlignment(Rule):
    name = "dfa"
    direct = True

    def direct_matrix(self, weight: Tensor, out_size: int, in_size: int, gen: torch.Generator) -> Tensor:
        return draw_normal(torch.Size((out_size, in_size)), weight, gen) * reference_rms(weight)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state
