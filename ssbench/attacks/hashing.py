"""What the hashing attacks share: projection, continuation, the clean code and its scores.

The hashing attacks (hag, sdha, fgsm-hash, pgd-hash: one file each; hsj-label) attack deep hashing
retrieval. Every gradient attack receives the *gradient module* (``modes.gradient_source``); codes it
optimises are that module's, retrieval quality is the target's (``ssbench.retrieval.scoring``). All
are L-inf: every step is projected on ``[x - eps, x + eps] cap [0, 1]``. The objectives are written
out in docs/retrieval.md.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ssbench.retrieval.heads import code_scale
from ssbench.retrieval.scoring import clean_codes

__all__ = ["alpha_schedule", "clean_codes", "code_agreement", "code_scale", "flipped_bits", "keep_best", "project", "smooth_hamming"]


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def alpha_schedule(step: int, steps: int, start: float, end: float) -> float:
    """Geometric continuation ``start -> end`` over ``steps`` steps."""
    if steps <= 1:
        return end
    return start * (end / start) ** (step / (steps - 1))


def keep_best(best_x: Tensor, best_s: Tensor, x_new: Tensor, s_new: Tensor) -> tuple[Tensor, Tensor]:
    better = s_new > best_s
    shape = (-1,) + (1,) * (x_new.dim() - 1)
    return torch.where(better.view(shape), x_new, best_x), torch.where(better, s_new, best_s)


def flipped_bits(codes: Tensor, b: Tensor) -> Tensor:
    """Per example Hamming distance between +-1 codes (B, K) and (B, K)."""
    return 0.5 * (b.shape[1] - (codes * b).sum(1))


def smooth_hamming(u: Tensor, r: Tensor, sigma: float) -> Tensor:
    """SDHA's dimension-wise surrogate of the Hamming distance between relaxed codes u (B, K) and
    +-1 codes r (B, M, K) -> (B, M):  sum_k [ |u_k - r_k|/2 * s(sigma u_k r_k) + 1 - s(sigma u_k r_k) ],
    s = sigmoid: ~0 on agreeing bits, ~1 on disagreeing ones."""
    s = torch.sigmoid(sigma * u[:, None, :] * r)
    return (0.5 * (u[:, None, :] - r).abs() * s + 1 - s).sum(-1)


def code_agreement(model: nn.Module, x: Tensor, b: Tensor, scale: float) -> Tensor:
    """sum_k b_k tanh(scale * z_k) per example (lower = farther from the clean code)."""
    with code_scale(model, scale):
        return (model(x) * b).sum(1)
