"""Class subsets, stratified sampling and the train/val split (index arithmetic on label tensors)."""
from __future__ import annotations

import torch
from torch import Tensor

from ssbench.errors import SpecError


def class_subset(labels: Tensor, classes: tuple[int, ...] | None, num_classes: int) -> tuple[Tensor, Tensor]:
    """(row indices of the chosen classes, labels remapped to 0..k-1 in the order given)."""
    if classes is None:
        return torch.arange(len(labels)), labels
    check_classes(classes, num_classes)
    lut = torch.full((num_classes,), -1, dtype=torch.long)
    lut[torch.as_tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    new = lut[labels]
    keep = torch.nonzero(new >= 0).flatten()
    return keep, new[keep]


def check_classes(classes: tuple[int, ...], num_classes: int) -> None:
    if len(classes) == 0:
        raise SpecError("data.classes is empty; list at least one class id or leave it unset")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise SpecError(f"data.classes {bad} out of range; class ids are 0..{num_classes - 1}")
    if len(set(classes)) != len(classes):
        raise SpecError(f"data.classes {list(classes)} repeats a class")


def stratified_sample(labels: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices of ``n`` rows whose class proportions follow ``labels`` (largest remainder).

    Deterministic for a given ``seed``; uses its own generator.
    """
    total = len(labels)
    if n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * n / total
    take = quota.floor().long()
    short = n - int(take.sum())
    if short > 0:  # hand the remaining rows to the largest remainders (ties: lower class first)
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:short]] += 1
    picked = []
    for c, k in zip(classes.tolist(), take.tolist()):
        rows = torch.nonzero(labels == c).flatten()
        picked.append(rows[torch.randperm(len(rows), generator=g)[:k]])
    return torch.sort(torch.cat(picked)).values


def train_val_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, val indices): disjoint, stratified, ``round(val_fraction * N)`` validation rows."""
    n_val = round(val_fraction * len(labels))
    if n_val == 0:
        return torch.arange(len(labels)), torch.zeros(0, dtype=torch.long)
    val = stratified_sample(labels, n_val, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val
