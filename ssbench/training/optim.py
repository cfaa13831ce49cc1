"""Optimiser and scheduler from an OptimSpec; the head may learn at its own rate."""
from __future__ import annotations

import torch
from torch import nn

from ssbench.specs import OptimSpec


def param_groups(model: nn.Module, spec: OptimSpec, head_prefix: str | None) -> list[dict]:
    if spec.head_lr is None or head_prefix is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": spec.lr, "name": "all"}]
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith(head_prefix + ".") else body).append(p)
    if not head:
        raise ValueError(f"head {head_prefix!r} has no parameters")
    return [{"params": body, "lr": spec.lr, "name": "backbone"}, {"params": head, "lr": spec.head_lr, "name": "head"}]


def build_optimizer(model: nn.Module, spec: OptimSpec, head_prefix: str | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, spec, head_prefix)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, spec: OptimSpec, epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch."""
    if spec.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if spec.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=spec.step_size, gamma=spec.gamma)
    if spec.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(spec.milestones), gamma=spec.gamma)
    return None
