"""In-memory image data sets and their per-batch transforms.

Training here is CPU-bound, so small data sets live as one uint8 (or float) tensor and every
transform (grey -> RGB, resize, augmentation) is applied to whole batches by the loader, not per
PIL image. Images stay at their native resolution in memory (60000 Fashion-MNIST images resized to
224x224x3 would need 9 GB); resizing happens per batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding ``pad`` (native pixels) and optional horizontal flip."""

    pad: int = 4
    flip: bool = True


def random_crop_flip(x: Tensor, aug: Augment, generator: torch.Generator | None) -> Tensor:
    """Pad each image by ``aug.pad`` zeros, crop back at a random offset, flip half of them.

    Vectorised over the batch with gather-style indexing; one draw per image from ``generator``.
    """
    n, _, h, w = x.shape
    if aug.pad > 0:
        p = aug.pad
        padded = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # n x h x 1
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # n x 1 x w
        batch = torch.arange(n)[:, None, None]
        # advanced indices on dims 0, 2, 3 with a slice on dim 1 -> result n x h x w x c
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if aug.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


class TensorImageDataset(Dataset):
    """Images (N x C x H x W, uint8 in 0..255 or float in [0, 1]) and int64 labels held in memory.

    ``size`` / ``channels`` are applied on the way out (bilinear resize; grey repeated to RGB);
    ``augment`` (train split only) is applied per batch by :func:`ssbench.data.make_loader` with the
    loader's own generator, or per item from torch's global RNG when indexed directly.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        size: int | None = None,
        channels: int | None = None,
        augment: Augment | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.size = size
        self.channels = channels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.transform_batch(self.images[i : i + 1], generator=None)
        return x[0], int(self.labels[i])

    @property
    def out_channels(self) -> int:
        return self.channels or self.images.shape[1]

    @property
    def out_size(self) -> int:
        return self.size or self.images.shape[-1]

    def transform_batch(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Raw stored batch -> float images in [0, 1] with the configured channels / size / augmentation."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.channels and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"cannot turn {x.shape[1]}-channel images into {self.channels} channels")
            x = x.expand(-1, self.channels, -1, -1)
        if self.augment is not None:
            # crop at native resolution (pad in native pixels), then resize
            x = random_crop_flip(x, self.augment, generator)
        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        return x.contiguous()

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of all images (native size, after grey -> RGB), in float64."""
        x = self.images
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        c = x.shape[1]
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        count = 0
        for start in range(0, len(x), 8192):  # chunked: float64 copies of 60000 images would be big
            chunk = x[start : start + 8192].double() / scale
            total += chunk.sum(dim=(0, 2, 3))
            total_sq += chunk.pow(2).sum(dim=(0, 2, 3))
            count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        mean = total / max(count, 1)
        std = (total_sq / max(count, 1) - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-6)
        if self.channels and self.channels != c:
            mean, std = mean.expand(self.channels), std.expand(self.channels)
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def select(self, index: Tensor, *, augment: Augment | None | bool = False) -> TensorImageDataset:
        """A new data set with the rows ``index`` (copied), same output transforms.

        ``augment=False`` keeps no augmentation, ``True`` keeps this set's, an Augment sets one.
        """
        aug = self.augment if augment is True else (augment or None)
        return TensorImageDataset(
            self.images[index], self.labels[index], size=self.size, channels=self.channels, augment=aug
        )
