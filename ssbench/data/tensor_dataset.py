"""In-memory image data sets and their per-batch transforms.

Training here is CPU-bound, so small data sets live as one uint8 (or float) tensor and every
transform (grey -> RGB, resize, augmentation) is applied to whole batches by the loader, not per
PIL image. Images stay at their native resolution in memory (60000 Fashion-MNIST images resized to
224x224x3 would need 9 GB); resizing happens per batch. Given a device, the loader sends the raw
stored batch there and transforms it there: a uint8 28x28 batch is a few hundred times fewer bytes
to copy than the float 224x224x3 batch it becomes, and the GPU does the resize. The random numbers
of augmentation are always drawn on the CPU, so the device changes the images by rounding only.
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


@dataclass(frozen=True)
class CropFlipDraws:
    """The random numbers of :func:`random_crop_flip` for a batch: crop offsets and flip flags.

    Drawn on the CPU for a whole (global) batch, then sliced, so a rank's share of a batch is
    augmented exactly as it would be in the single-process batch, and a GPU batch as a CPU one."""

    oy: Tensor | None
    ox: Tensor | None
    flip: Tensor | None

    def __getitem__(self, rows: slice) -> CropFlipDraws:
        return CropFlipDraws(*(None if t is None else t[rows] for t in (self.oy, self.ox, self.flip)))


def draw_crop_flip(n: int, aug: Augment, generator: torch.Generator | None) -> CropFlipDraws:
    """One crop offset pair and one flip flag per image, from ``generator`` (the global RNG if None)."""
    oy = ox = flip = None
    if aug.pad > 0:
        oy = torch.randint(0, 2 * aug.pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * aug.pad + 1, (n,), generator=generator)
    if aug.flip:
        flip = torch.rand(n, generator=generator) < 0.5
    return CropFlipDraws(oy, ox, flip)


def apply_crop_flip(x: Tensor, aug: Augment, draws: CropFlipDraws) -> Tensor:
    """Pad each image by ``aug.pad`` zeros, crop back at the drawn offset, flip the flagged ones.

    Vectorised over the batch with gather-style indexing, on ``x``'s device."""
    n, _, h, w = x.shape
    dev = x.device
    if draws.oy is not None and draws.ox is not None:
        p = aug.pad
        padded = F.pad(x, (p, p, p, p))
        rows = (draws.oy.to(dev)[:, None] + torch.arange(h, device=dev))[:, :, None]  # n x h x 1
        cols = (draws.ox.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, :]  # n x 1 x w
        batch = torch.arange(n, device=dev)[:, None, None]
        # advanced indices on dims 0, 2, 3 with a slice on dim 1 -> result n x h x w x c
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if draws.flip is not None:
        x = torch.where(draws.flip.to(dev)[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def random_crop_flip(x: Tensor, aug: Augment, generator: torch.Generator | None) -> Tensor:
    """Pad each image by ``aug.pad`` zeros, crop back at a random offset, flip half of them.

    One draw per image from ``generator`` (see :func:`draw_crop_flip`)."""
    return apply_crop_flip(x, aug, draw_crop_flip(len(x), aug, generator))


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

    def draw_augment(self, n: int, generator: torch.Generator | None) -> CropFlipDraws | None:
        """The augmentation's random numbers for ``n`` images (None without augmentation)."""
        return None if self.augment is None else draw_crop_flip(n, self.augment, generator)

    def transform_batch(
        self, x: Tensor, generator: torch.Generator | None = None, *, draws: CropFlipDraws | None = None
    ) -> Tensor:
        """Raw stored batch -> float images in [0, 1] with the configured channels / size / augmentation.

        Runs on ``x``'s device. Augmentation uses ``draws`` when given (the loader's, sliced from the
        global batch), else draws from ``generator`` on the CPU."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.channels and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"cannot turn {x.shape[1]}-channel images into {self.channels} channels")
            x = x.expand(-1, self.channels, -1, -1)
        if self.augment is not None:
            # crop at native resolution (pad in native pixels), then resize
            if draws is None:
                draws = draw_crop_flip(len(x), self.augment, generator)
            x = apply_crop_flip(x, self.augment, draws)
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
