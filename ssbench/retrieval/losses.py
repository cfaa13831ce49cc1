"""Hashing losses on relaxed codes u = tanh(z) in (-1, 1). Registered in ``HASH_LOSSES``.

* ``csq`` (Yuan et al. 2020, central similarity quantization): each class owns a hash center c;
  loss = mean_bits BCE((u + 1) / 2, (c + 1) / 2) + lambda * mean (|u| - 1)^2.
  Multi-label targets use the sign of the sum of their classes' centers (zero bits from a seeded
  random +-1 vector).
* ``dpsh`` (Li et al. 2016, pairwise-label deep hashing) on the pairs of a batch:
  theta_ij = u_i . u_j / 2, loss = mean_ij [softplus(theta_ij) - s_ij theta_ij] + lambda * mean (u - sign u)^2,
  s_ij = 1 when i and j share a label.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.registry import Registry
from ssbench.retrieval.centers import hash_centers

HASH_LOSSES: Registry[Callable[..., nn.Module]] = Registry("hashing loss")


def multi_hot(targets: Tensor, num_classes: int) -> Tensor:
    """int labels (N,) or multi-hot (N, C) -> float multi-hot (N, C)."""
    if targets.dim() == 1:
        return F.one_hot(targets.long(), num_classes).float()
    return targets.float()


def quantization(u: Tensor) -> Tensor:
    return (u.abs() - 1).pow(2).mean()


@HASH_LOSSES.register("csq", help="central similarity quantization: BCE to class hash centers (Hadamard rows)")
class CSQLoss(nn.Module):
    def __init__(self, num_classes: int, bits: int, *, quantization_weight: float = 1e-4, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("centers", hash_centers(num_classes, bits, seed=seed))
        g = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("tie_break", torch.randint(0, 2, (bits,), generator=g).float() * 2 - 1)
        self.quantization_weight = quantization_weight

    def targets_to_centers(self, targets: Tensor) -> Tensor:
        if targets.dim() == 1:
            return self.centers[targets.long()]
        s = targets.float() @ self.centers
        return torch.where(s == 0, self.tie_break.expand_as(s), s.sign())

    def forward(self, u: Tensor, targets: Tensor) -> Tensor:
        c = self.targets_to_centers(targets).to(u.dtype)
        p = ((u + 1) / 2).clamp(1e-6, 1 - 1e-6)
        center = F.binary_cross_entropy(p, (c + 1) / 2)
        return center + self.quantization_weight * quantization(u)


@HASH_LOSSES.register("dpsh", help="pairwise-label likelihood on the pairs of a batch + quantization")
class DPSHLoss(nn.Module):
    def __init__(self, num_classes: int, bits: int, *, quantization_weight: float = 1e-4, seed: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.quantization_weight = quantization_weight

    def forward(self, u: Tensor, targets: Tensor) -> Tensor:
        y = multi_hot(targets, self.num_classes).to(u.dtype)
        s = (y @ y.T > 0).to(u.dtype)
        theta = 0.5 * u @ u.T
        likelihood = (F.softplus(theta) - s * theta).mean()
        return likelihood + self.quantization_weight * (u - u.detach().sign()).pow(2).mean()


def make_hash_loss(name: str, num_classes: int, bits: int, *, quantization_weight: float = 1e-4, seed: int = 0) -> nn.Module:
    return HASH_LOSSES.get(name)(num_classes, bits, quantization_weight=quantization_weight, seed=seed)
