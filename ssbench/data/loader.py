"""Batches for training and evaluation.

For in-memory sets the loader slices tensors directly (no per-item Python, no workers): each
iteration draws a fresh permutation from a ``torch.Generator`` seeded by ``(seed, epoch)``, so runs
are reproducible, re-iterable, and never touch torch's global RNG. Augmentation of the train split
is applied per batch with the same generator. Other data sets fall back to ``torch.utils.data.DataLoader``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ssbench.data.tensor_dataset import TensorImageDataset


def _resolve(dataset: Dataset) -> tuple[TensorImageDataset, Tensor | None] | None:
    """(base TensorImageDataset, row indices or None) for a TensorImageDataset or nested Subsets of one."""
    index: Tensor | None = None
    while isinstance(dataset, Subset):
        sub = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        index = sub if index is None else sub[index]
        dataset = dataset.dataset
    if isinstance(dataset, TensorImageDataset):
        return dataset, index
    return None


class TensorLoader:
    """Re-iterable batch iterator over a TensorImageDataset (or Subsets of one)."""

    def __init__(
        self, dataset: TensorImageDataset, index: Tensor | None, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dataset, self.index = dataset, index
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Next iteration uses the permutation of ``epoch`` (for resuming a run)."""
        self.epoch = epoch

    def _n(self) -> int:
        return len(self.dataset) if self.index is None else len(self.index)

    def __len__(self) -> int:
        n = self._n()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        self.epoch += 1
        n = self._n()
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        rows = order if self.index is None else self.index[order]
        ds = self.dataset
        for b in range(len(self)):
            idx = rows[b * self.batch_size : (b + 1) * self.batch_size]
            yield ds.transform_batch(ds.images[idx], generator=g), ds.labels[idx]


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches ``(images float N x C x H x W in [0, 1], labels int64 N)``; ``len()`` is the batch count."""
    resolved = _resolve(dataset)
    if resolved is not None:
        base, index = resolved
        return TensorLoader(base, index, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    # Folder data sets (ImageNet): decoding JPEGs is the cost, so use worker-free DataLoader with its
    # own generator (the global RNG is left alone); augmentation there is torchvision's per item.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
