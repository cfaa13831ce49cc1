"""Batches for training and evaluation: ``make_loader(dataset, batch_size, ...)``.

Every loader it returns is re-iterable, has ``len()`` (the number of steps) and ``set_epoch(epoch)``
(for resuming a run), and never touches torch's global RNG. Each iteration draws its permutation
from a ``torch.Generator`` seeded by ``(seed, epoch)``, so the batches of an epoch are a function of
``(seed, epoch)`` alone.

* In-memory sets (a :class:`TensorImageDataset` or Subsets of one): the loader slices tensors
  directly, no per-item Python and no worker processes; augmentation draws from the same generator,
  per batch. With ``device`` the raw stored batch is copied there (pinned, asynchronously, on CUDA)
  and converted, augmented and resized there.
* Other sets (image folders, list files): a torch ``DataLoader`` with ``workers`` processes decodes
  the images. Each item's random transform is seeded by ``(seed, epoch, index)``, so any number of
  workers yields the same batches in the same order as none.
* ``rank``/``world`` shard each global batch for data-parallel training: rank r gets its contiguous
  share of every single-process batch, so the union over ranks at each step is exactly the
  single-process batch, and every rank takes the same number of steps.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from ssbench.data.tensor_dataset import TensorImageDataset
from ssbench.errors import SsbenchError

PREFETCH_FACTOR = 2  # batches in flight per worker: enough to hide decoding jitter, bounded shared memory


class Loader(Protocol):
    """What :func:`make_loader` returns: iterate for ``(images, labels)`` batches of one epoch."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


def default_workers(world: int = 1) -> int:
    """Data-loading processes per training process when none are asked for: the cores this process
    may use, shared between ``world`` training processes, less one for the training loop; at most 16
    (each holds ``PREFETCH_FACTOR`` batches in shared memory), 0 on a single core. JPEG decoding
    scales with them: on 16 cores, 8 workers gave 6x the images/s of none and 15 gave 11x
    (``benchmarks/pipeline.py``)."""
    try:
        cores = len(os.sched_getaffinity(0))  # respects taskset / container CPU sets
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return max(0, min(16, cores // max(world, 1) - 1))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def shard_bounds(m: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of a global batch of ``m`` examples:
    ``m // world`` each, the first ``m % world`` ranks one more (as ``torch.tensor_split``); a full
    batch (``batch_size`` divides by ``world``) splits evenly, a short last one may leave a rank none."""
    q, r = divmod(m, world)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def _check_shard(batch_size: int, rank: int, world: int) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world {world}: need world >= 1 and 0 <= rank < world")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} does not divide between {world} processes")


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
        self, dataset: TensorImageDataset, index: Tensor | None, batch_size: int, *, shuffle: bool, seed: int,
        drop_last: bool, device: torch.device | str | None = None, rank: int = 0, world: int = 1,
    ) -> None:
        _check_shard(batch_size, rank, world)
        self.dataset, self.index = dataset, index
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.device = None if device is None else torch.device(device)
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Next iteration uses the permutation of ``epoch`` (for resuming a run)."""
        self.epoch = epoch

    def _n(self) -> int:
        return len(self.dataset) if self.index is None else len(self.index)

    def __len__(self) -> int:
        return _num_batches(self._n(), self.batch_size, self.drop_last)

    def _fetch(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The raw stored rows and their labels, on the loader's device."""
        ds, dev = self.dataset, self.device
        if dev is None or dev.type == "cpu":
            return ds.images[rows], ds.labels[rows]
        if dev.type == "cuda":
            # gather straight into page-locked memory so the copy runs asynchronously; the caching
            # host allocator keeps each buffer until its copy is done
            out = []
            for t in (ds.images, ds.labels):
                buf = torch.empty((len(rows), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
                out.append(torch.index_select(t, 0, rows, out=buf).to(dev, non_blocking=True))
            return out[0], out[1]
        return ds.images[rows].to(dev), ds.labels[rows].to(dev)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = _epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        n = self._n()
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        rows = order if self.index is None else self.index[order]
        ds = self.dataset
        for b in range(len(self)):
            batch = rows[b * self.batch_size : (b + 1) * self.batch_size]
            # the random numbers of the whole global batch, in the single-process order, then this rank's share
            draws = ds.draw_augment(len(batch), g)
            lo, hi = shard_bounds(len(batch), self.rank, self.world)
            x, y = self._fetch(batch[lo:hi])
            yield ds.transform_batch(x, draws=None if draws is None else draws[lo:hi]), y


class ShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, item_seed)`` over ``n`` items: the permutation and every item's seed are
    drawn from a generator seeded by ``(seed, epoch)``, so an item's random transform depends on
    ``(seed, epoch, index)`` alone, not on which process decodes it; rank ``rank`` of ``world``
    gets its :func:`shard_bounds` share of every global batch."""

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool, rank: int = 0, world: int = 1
    ) -> None:
        _check_shard(batch_size, rank, world)
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return _num_batches(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)  # by item index, not by position
        for b in range(len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            lo, hi = shard_bounds(len(batch), self.rank, self.world)
            part = batch[lo:hi]
            yield list(zip(part.tolist(), seeds[part].tolist()))


@dataclass(frozen=True)
class _Failed:
    """A user error raised while loading an item, carried out of a worker as data: the DataLoader
    would re-raise it with the worker's traceback folded into the message, which must stay one line."""

    kind: type[SsbenchError]
    message: str

    def error(self) -> SsbenchError:
        try:
            return self.kind(self.message)
        except TypeError:  # a subclass with its own constructor
            return SsbenchError(self.message)


class _SeededItems(Dataset):
    """``dataset[index]`` with torch's CPU RNG seeded by ``item_seed`` for that item alone (the
    caller's RNG state is restored), so torchvision's random transforms give the same result in any
    process."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, item_seed = key
        # the CPU generator alone (what torchvision's transforms draw from): torch.manual_seed would
        # also seed every accelerator's generators, ~50x slower per item
        rng = torch.default_generator
        state = rng.get_state()
        rng.manual_seed(item_seed)
        try:
            return self.base[index]
        except SsbenchError as e:
            return _Failed(type(e), str(e))
        finally:
            rng.set_state(state)


def _collate(items: list[Any]) -> Any:
    for item in items:
        if isinstance(item, _Failed):
            return item
    return default_collate(items) if items else None  # None: this rank's share of a short last batch is empty


class FolderLoader:
    """A torch DataLoader over any map-style data set, driven by a :class:`ShardedBatchSampler`."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool,
        device: torch.device | str | None = None, workers: int | None = None, rank: int = 0, world: int = 1,
    ) -> None:
        self.items = _SeededItems(dataset)
        self.batches = ShardedBatchSampler(
            len(self.items), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world=world
        )
        self.device = None if device is None else torch.device(device)
        self.workers = default_workers(world) if workers is None else workers
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        pin = self.device is not None and self.device.type == "cuda"
        many = self.workers > 0
        self.loader = DataLoader(
            self.items, batch_sampler=self.batches, num_workers=self.workers, collate_fn=_collate, pin_memory=pin,
            persistent_workers=many, prefetch_factor=PREFETCH_FACTOR if many else None,
            # a private generator: DataLoader would otherwise draw its worker base seed from the global RNG
            generator=torch.Generator(),
        )
        self.epoch = 0
        self._empty: tuple[Tensor, ...] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Next iteration uses the permutation and item seeds of ``epoch`` (for resuming a run)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def _empty_batch(self) -> tuple[Tensor, ...]:
        """A zero-row batch shaped like the others (a rank with no share of a short last batch)."""
        if self._empty is None:
            self._empty = tuple(t[:0] for t in default_collate([self.items[(0, 0)]]))
        return self._empty

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.batches.set_epoch(self.epoch)
        self.epoch += 1
        dev = self.device
        for batch in self.loader:
            if isinstance(batch, _Failed):
                raise batch.error()
            if batch is None:
                batch = self._empty_batch()
            elif self._empty is None:
                self._empty = tuple(t[:0] for t in batch)
            x, y = batch
            if dev is not None:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            yield x, y


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
    device: torch.device | str | None = None, workers: int | None = None, rank: int = 0, world: int = 1,
) -> Loader:
    """Batches ``(images float N x C x H x W in [0, 1], labels)``; ``len()`` is the number of steps.

    ``device``: where batches arrive (in-memory sets are transformed there; None: the CPU, as the
    data are stored). ``workers``: decoding processes for data sets read from files (None:
    :func:`default_workers`; in-memory sets need none). ``rank``/``world``: this process's share of
    every global batch of ``batch_size`` (which must divide by ``world``).
    """
    resolved = _resolve(dataset)
    if resolved is not None:
        base, index = resolved
        return TensorLoader(base, index, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                            device=device, rank=rank, world=world)
    return FolderLoader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                        device=device, workers=workers, rank=rank, world=world)
