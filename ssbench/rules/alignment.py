"""Alignment between each layer's forward weight W and the feedback B its backward actually uses."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssbench.rules.convert import feedback_layers, warn_idle_layers


@dataclass(frozen=True)
class LayerAlignment:
    layer: str
    angle_deg: float | None  # None where B and W differ in shape (dfa)
    norm_ratio: float | None  # ||B|| / ||W||; None before a dfa layer has drawn B_l


def angle_deg(a: Tensor, b: Tensor) -> float:
    """Angle between two tensors as flat vectors, in degrees.

    2 atan2(|a^ - b^|, |a^ + b^|) is accurate near 0 and 180 degrees, where acos(cos) loses all
    digits (float32 cannot tell 0.01 degrees from 0 through a cosine).
    """
    a64, b64 = a.detach().flatten().double(), b.detach().flatten().double()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return float("nan")
    ua, ub = a64 / na, b64 / nb
    return math.degrees(2 * math.atan2(float((ua - ub).norm()), float((ua + ub).norm())))


def alignment_metrics(model: nn.Module) -> list[LayerAlignment]:
    """One row per converted layer. Once the model has run, layers whose own forward never ran
    (their weight used functionally, e.g. F.linear(x, layer.weight)) are left out with a
    ConversionWarning: the rule never reached them, so their B says nothing about training."""
    layers = feedback_layers(model)
    if any(getattr(m, "ran_forward", False) for _, m in layers):
        idle = [n for n, m in layers if not getattr(m, "ran_forward", False)]
        if idle:
            warn_idle_layers(idle, len(layers), "left out of the alignment metrics")
            layers = [(n, m) for n, m in layers if n not in idle]
    rows = []
    for name, layer in layers:
        # in float64 whatever the model's dtype (bf16 / fp16 weights, B drawn in their dtype); autocast
        # never casts float64, so the metrics are the same inside an autocast block
        w, b = layer.weight.detach().double(), layer.feedback_tensor()
        if b is None:
            rows.append(LayerAlignment(name, None, None))
            continue
        b = b.double()
        ratio = float(b.norm() / w.norm()) if w.norm() > 0 else float("nan")
        angle = angle_deg(w, b) if b.shape == w.shape else None
        rows.append(LayerAlignment(name, angle, ratio))
    return rows


def mean_angle(rows: list[LayerAlignment]) -> float | None:
    vals = [r.angle_deg for r in rows if r.angle_deg is not None and not math.isnan(r.angle_deg)]
    return float(torch.tensor(vals).mean()) if vals else None
