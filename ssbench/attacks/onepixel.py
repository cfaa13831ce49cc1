"""Few-pixel attack (Su et al. 2019): differential evolution over k pixels (torchattacks.OnePixel).

Its budget is a pixel count (l0), not an epsilon: the sweep runs over 0..5 pixels.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchattacks
from torch import Tensor, nn

from ssbench.attacks.base import Attack, register, run_torchattack


class _OnePixel(torchattacks.OnePixel):
    """torchattacks' OnePixel with pixel positions clipped into the image: differential evolution may
    sample the upper bound (= height) exactly, which indexes one past the last row."""

    def _perturb(self, image: Tensor, delta: Any) -> Tensor:
        delta = np.array(delta, dtype=np.float64)
        if delta.ndim < 2:
            delta = delta[None]
        h, w = image.shape[-2:]
        out = image.clone().detach().to(self.device).repeat(len(delta), 1, 1, 1)
        for i, d in enumerate(delta):
            for pixel in d.reshape(self.pixels, -1):
                px, py = min(int(pixel[0]), h - 1), min(int(pixel[1]), w - 1)
                out[i, :, px, py] = torch.as_tensor(pixel[2:], dtype=out.dtype, device=out.device)
        return out


@register
class OnePixel(Attack):
    """Few-pixel: differential evolution over 1..5 pixels, budget = pixel count (black-box, l0)."""

    name = "onepixel"
    suite = "blackbox"
    norm = "l0"
    uses_gradients = False
    default_steps = 10  # differential-evolution generations
    budget_grid = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "pixels": int(eps), "popsize": self.options.get("popsize", 10)}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        atk = _OnePixel(model, pixels=int(eps), steps=self.steps, popsize=self.options.get("popsize", 10))
        with torch.no_grad():
            return run_torchattack(atk, x, y)
