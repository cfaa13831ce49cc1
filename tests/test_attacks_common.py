"""Shared tiny models for the attack tests (digits 8x8, CPU, seconds). No tests here."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    p = torch.randperm(len(x), generator=g)
    x, y = x[p], y[p]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 16, 10),
    )


def train(model: nn.Module, steps: int, lr: float = 0.1, seed: int = 0) -> nn.Module:
    xtr, ytr, _, _ = digits()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(xtr), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(xtr[i]), ytr[i]).backward()
        opt.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def trained(rule: str, arch: str = "mlp") -> nn.Module:
    """BP-pretrained for 300 steps, then (rule != 'bp') converted and fine-tuned 300 steps with it.
    Cached: callers must not modify it (tests check that attacks don't)."""
    model = train(mlp() if arch == "mlp" else small_cnn(), 300)
    if rule != "bp":
        from ssbench.rules import convert

        convert(model, rule, seed=0)
        train(model, 300, lr=0.05, seed=1)
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


class Scaled(nn.Module):
    """``net``'s logits times ``factor``: same decisions, over-confident (x1000: float32 and even
    float64 cross-entropy is exactly 0 on most examples, so its gradient is too)."""

    def __init__(self, net: nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.factor
