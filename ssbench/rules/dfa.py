"""Direct feedback alignment (Nokland 2016): every layer's input receives B_l e directly.

e = dL/d(model output). B_l, of shape (output size, input size of the layer), is fixed random with
entries N(0, rms(W_l)^2): the per-entry scale of the converted weight, so the broadcast error has the
size a BP error through W_l would have (a zero W_l takes the init scale of its shape, see
`reference_rms`). Because B_l's shape depends on the layer's input size, it is drawn lazily at the
first backward from a per-layer seeded generator (the same B_l whenever it is drawn) and restored
from checkpoints by shape. B_l is sized by the layer's real input: where the layer pads outside its
convolution (padding_mode reflect / replicate / circular, padding='same' with an even kernel) the
error e B_l goes straight to the unpadded input, never through the pad's backward (which would sum
2-4 padded positions into each border input and break B_l's documented variance). An unbatched
input (no batch axis) is refused with a SpecError: the model's output then has no batch axis either,
so e cannot be split into per-example rows.

With init='xavier' B_l is xavier-uniform, U(-b, b), b = sqrt(6 / fan_sum), as BioTorch draws it:
* Linear: BioTorch's B has ssbench's shape (output size, in_features): fan_sum = out + in, exactly
  torch's xavier_uniform_ of B_l.
* Conv2d: BioTorch's B is a kernel (output size K, C_in, kh, kw), xavier with fan_in = C_in kh kw and
  fan_out = K kh kw (variance 2 / ((C_in + K) kh kw)), applied as conv_transpose to e broadcast over
  every output position. An entry of its effective dense matrix sums the kernel taps that read that
  input position: kh kw / (sh sw) of them inside a large map, fewer at borders and in small maps
  (LeNet's conv3 on a 5x5 map with a 1x1 output: one). ssbench's B_l is that dense matrix with
  independent entries, drawn with BioTorch's *mean* per-entry variance,
  2 T / ((C_in/groups + K) kh kw), T = the mean number of taps per input position, counted exactly
  from the layer's geometry (`conv_taps_per_input`), so ||B_l|| has BioTorch's expected size. (Until
  2026-12-04 T was taken as kh kw / (sh sw), the interior value: 5x too large a std for a 1x1 output
  map.) Xavier of B_l's own dense shape (fan_sum = K + C_in H W) would make conv feedback
  ~sqrt(H W / (C_in + K)) times weaker than BioTorch's.

With init='gaussian' B_l ~ N(0, feedback_var / in_size): in_size is B_l's fan_in as `fans` computes
it (B_l is (out_size, in_size), like a Linear weight), i.e. the layer's input size (C_in H W for a
conv layer: its dense matrix, not a kernel), so feedback_var means for B_l what it means for fa's B.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssbench.rules.base import RULES, Rule, draw_normal, draw_uniform, reference_rms


def conv_taps_per_input(layer: nn.Conv2d, in_hw: tuple[int, int]) -> float:
    """Mean over input positions of how many (output position, kernel tap) pairs read that position:
    the number of kernel entries a transposed convolution sums into one input entry, on average.
    `in_hw` is the layer's real (unpadded) input map. With zero padding, taps on the pad read
    nothing; with reflect / replicate / circular padding every tap reads some real input."""
    taps = 1.0
    zeros = layer.padding_mode == "zeros"
    for n, k, s, d, (left, right) in zip(in_hw, layer.kernel_size, layer.stride, layer.dilation, _pads(layer)):
        out = (n + left + right - d * (k - 1) - 1) // s + 1
        taps *= sum(1 for j in range(out) for t in range(k) if not zeros or 0 <= j * s + t * d - left < n) / n
    return taps


def _pads(layer: nn.Conv2d) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension, for int and 'valid' / 'same' paddings."""
    if layer.padding == "valid":
        return [(0, 0), (0, 0)]
    if layer.padding == "same":  # torch puts the odd extra padding after
        totals = [d * (k - 1) for k, d in zip(layer.kernel_size, layer.dilation)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in layer.padding]  # type: ignore[union-attr]


def dfa_xavier_bound(layer: nn.Module, out_size: int, in_size: int, in_hw: tuple[int, int] | None = None) -> float:
    """Half-width of B_l's xavier-uniform entries for this layer: BioTorch's per-entry variance (its
    mean over positions, for a conv layer on inputs of spatial size `in_hw`; see the module doc)."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        if in_hw is None:  # no geometry known: the interior value
            taps = kh * kw / (layer.stride[0] * layer.stride[1])
        else:
            taps = conv_taps_per_input(layer, in_hw)
        return math.sqrt(6.0 * taps / ((layer.weight.shape[1] + out_size) * kh * kw))
    return math.sqrt(6.0 / (out_size + in_size))


@RULES.register("dfa", help="direct feedback alignment: hidden layers receive B_l e")
class DirectFeedbackAlignment(Rule):
    name = "dfa"
    direct = True

    def direct_matrix(self, layer: nn.Module, out_size: int, in_size: int, gen: torch.Generator,
                      in_hw: tuple[int, int] | None = None) -> Tensor:
        weight, shape = layer.weight, torch.Size((out_size, in_size))
        if self.xavier:
            return draw_uniform(shape, dfa_xavier_bound(layer, out_size, in_size, in_hw), weight, gen)
        if self.init == "gaussian":
            return draw_normal(shape, weight, gen) * math.sqrt(float(self.feedback_var) / in_size)  # type: ignore[arg-type]
        return draw_normal(shape, weight, gen) * reference_rms(weight)

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        return layer.feedback_state
