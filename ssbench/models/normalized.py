"""Input normalisation inside the model, so attacks and data both work in [0, 1] pixel space."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalized(nn.Module):
    """``net((x - mean) / std)`` for inputs ``x`` in [0, 1]; mean/std are buffers (saved in state_dict)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels, std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)
