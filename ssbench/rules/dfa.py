"""Direct feedback alignment (Nokland 2016): every layer's input receives B_l e directly.

e = dL/d(model output). B_l, of shape (output size, input size of the layer), is fixed random with
entries N(0, rms(W_l)^2): the per-entry scale of the converted weight, so the broadcast error has the
size a BP error through W_l would have (a zero W_l takes the init scale of its shape, see
`reference_rms`). Because B_l's shape depends on the layer's input size, it is drawn lazily at the
first backward from a per-layer seeded generator (the same B_l whenever it is drawn) and restored
from checkpoints by shape.

With init='xavier' B_l is xavier-uniform, U(-b, b), b = sqrt(6 / fan_sum), as BioTorch draws it:
* Linear: BioTorch's B has ssbench's shape (output size, in_features): fan_sum = out + in, exactly
  torch's xavier_uniform_ of B_l.
* Conv2d: BioTorch's B is a kernel (output size K, C_in, kh, kw), xavier with fan_in = C_in kh kw and
  fan_out = K kh kw, applied as conv_transpose to e broadcast over every output position. Each input
  entry then sums about kh kw / (sh sw) kernel taps, so one entry of its effective dense matrix has
  variance 2 / ((C_in + K) sh sw). ssbench's B_l is that dense matrix (independent entries), drawn
  with the same per-entry variance: fan_sum = (C_in/groups + K) sh sw. Xavier of B_l's own dense
  shape (fan_sum = K + C_in H W) would make conv feedback ~sqrt(H W / (C_in + K)) times weaker than
  BioTorch's.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssbench.rules.base import RULES, Rule, draw_normal, draw_uniform, reference_rms


def dfa_xavier_bound(layer: nn.Module, out_size: int, in_size: int) -> float:
    """Half-width of BioTorch's xavier-uniform B_l entries for this layer (see the module doc)."""
    if isinstance(layer, nn.Conv2d):
        sh, sw = layer.stride
        return math.sqrt(6.0 / ((layer.weight.shape[1] + out_size) * sh * sw))
    return math.sqrt(6.0 / (out_size + in_size))


@RULES.register("dfa", help="direct feedback alignment: hidden layers receive B_l e")
class DirectFeedbackAlignment(Rule):
    name = "dfa"
    direct = True

    def direct_matrix(self, layer: nn.Module, out_size: int, in_size: int, gen: torch.Generator) -> Tensor:
        weight, shape = layer.weight, torch.Size((out_size, in_size))
        if self.xavier:
            return draw_uniform(shape, dfa_xavier_bound(layer, out_size, in_size), weight, gen)
        return draw_normal(shape, weight, gen) * reference_rms(weight)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state
