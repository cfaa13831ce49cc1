"""Procedural image corruptions at severities 0..5, offline, batched on tensors.

In the spirit of Hendrycks & Dietterich's ImageNet-C / CIFAR-10-C (ICLR 2019), written from the
definitions for any ``N x C x H x W`` batch in [0, 1] (28x28 grey and 32x32 colour included), with
no downloads and no external image libraries beyond PIL (JPEG only).

Contract of every corruption (checked by the tests):
- severity 0 returns the input unchanged (an exact copy);
- severities 1..5 move the images further from the clean ones, on average over a batch;
- output is clamped to [0, 1]; dtype, shape and device are kept;
- randomness comes only from a ``torch.Generator`` seeded by ``seed`` (same seed, same output),
  drawn on the CPU and independent of the severity, so a higher severity scales the *same* noise,
  blur direction, fog map or displacement field.

Spatial parameters (blur radii, displacements) are given for 32 px images and scale with the
image size.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssbench.errors import SpecError
from ssbench.registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)

Fn = Callable[[Tensor, float, torch.Generator], Tensor]


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``params[s - 1]`` is the strength at severity s."""

    name: str
    fn: Fn
    params: tuple[float, float, float, float, float]
    family: str
    help: str

    def __call__(self, x: Tensor, severity: int, seed: int = 0) -> Tensor:
        if not isinstance(severity, int) or not 0 <= severity <= 5:
            raise SpecError(f"corruption severity must be an integer in 0..5, got {severity!r}")
        if x.ndim != 4:
            raise ValueError(f"corruptions take N x C x H x W batches, got shape {tuple(x.shape)}")
        if severity == 0:
            return x.clone()
        g = torch.Generator().manual_seed(int(seed))
        out = self.fn(x.float(), self.params[severity - 1], g)
        return out.clamp_(0.0, 1.0).to(x.dtype)


CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def _register(name: str, family: str, params: tuple[float, ...], help: str) -> Callable[[Fn], Fn]:
    def add(fn: Fn) -> Fn:
        CORRUPTIONS.register(name, help=help)(Corruption(name, fn, params, family, help))  # type: ignore[arg-type]
        return fn

    return add


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (0 = identity) to a batch in [0, 1]."""
    return CORRUPTIONS.get(name)(x, severity, seed)


def _randn(shape: tuple[int, ...], g: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=g).to(device=like.device, dtype=like.dtype)


def _rand(shape: tuple[int, ...], g: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=g).to(device=like.device, dtype=like.dtype)


def _scale(x: Tensor) -> float:
    """Image size relative to 32 px (spatial parameters are defined at 32 px)."""
    return min(x.shape[-2:]) / 32.0


# -- noise ----------------------------------------------------------------------------------------

@_register("gaussian_noise", "noise", (0.04, 0.08, 0.12, 0.18, 0.26), "additive Gaussian noise, std per severity")
def gaussian_noise(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    return x + sigma * _randn(tuple(x.shape), g, x)


@_register("shot_noise", "noise", (60.0, 25.0, 12.0, 5.0, 3.0), "Poisson (photon) noise, photons per unit intensity")
def shot_noise(x: Tensor, photons: float, g: torch.Generator) -> Tensor:
    rate = (x * photons).clamp_min(0).cpu().double()
    return (torch.poisson(rate, generator=g) / photons).to(device=x.device, dtype=x.dtype)


@_register("impulse_noise", "noise", (0.02, 0.05, 0.09, 0.15, 0.24), "salt-and-pepper noise, fraction of pixels")
def impulse_noise(x: Tensor, amount: float, g: torch.Generator) -> Tensor:
    # Which pixels and which value are drawn independently of `amount`: a pixel hit at a lower
    # severity is hit (with the same value) at every higher one.
    hit = _rand(tuple(x.shape), g, x) < amount
    salt = (_rand(tuple(x.shape), g, x) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


# -- blur -----------------------------------------------------------------------------------------

def _filter(x: Tensor, kernels: Tensor) -> Tensor:
    """Per-image 2-D filtering (kernels: N x k x k, odd k), reflect padding, channels alike."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(x).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)


def _disk(radius: float, supersample: int = 32) -> Tensor:
    """Anti-aliased disk: each tap is the fraction of its pixel covered by the disk."""
    half = int(math.ceil(radius))
    k = 2 * half + 1
    sub = (torch.arange(k * supersample, dtype=torch.float64) + 0.5) / supersample - (half + 0.5)
    yy, xx = torch.meshgrid(sub, sub, indexing="ij")
    inside = ((xx**2 + yy**2) <= radius**2).double()
    ker = inside.reshape(k, supersample, k, supersample).mean(dim=(1, 3))
    if ker.sum() == 0:
        ker[half, half] = 1.0
    return (ker / ker.sum()).float()


@_register("defocus_blur", "blur", (0.8, 1.2, 1.7, 2.3, 3.0), "disk (lens defocus) blur, radius in px at 32 px")
def defocus_blur(x: Tensor, radius: float, g: torch.Generator) -> Tensor:
    # the floor keeps severities distinct (and not the identity) on tiny images such as 8x8 digits
    ker = _disk(max(radius * _scale(x), 0.5 + 0.3 * radius))
    return _filter(x, ker.expand(x.shape[0], -1, -1))


def _line_kernels(length: float, angles: Tensor, supersample: int = 16) -> Tensor:
    """Anti-aliased line segments of `length` px through the centre at `angles` (radians)."""
    half = int(math.ceil(length / 2)) + 1
    k = 2 * half + 1
    t = (torch.arange(supersample * k, dtype=torch.float64) + 0.5) / (supersample * k) - 0.5  # along the line
    out = torch.zeros(len(angles), k, k, dtype=torch.float64)
    for i, a in enumerate(angles.double()):
        xs = half + 0.5 + t * length * torch.cos(a)
        ys = half + 0.5 - t * length * torch.sin(a)
        ix, iy = xs.floor().long().clamp(0, k - 1), ys.floor().long().clamp(0, k - 1)
        out[i].index_put_((iy, ix), torch.ones_like(xs), accumulate=True)
    out /= out.sum(dim=(1, 2), keepdim=True)
    return out.float()


@_register("motion_blur", "blur", (2.0, 3.5, 5.0, 7.0, 10.0), "linear motion blur at a random angle, length in px at 32 px")
def motion_blur(x: Tensor, length: float, g: torch.Generator) -> Tensor:
    angles = torch.rand(x.shape[0], generator=g) * math.pi
    return _filter(x, _line_kernels(max(length * _scale(x), 1.0 + 0.15 * length), angles))


def _affine(x: Tensor, theta: Tensor, padding: str = "zeros") -> Tensor:
    """Resample x with per-image 2x3 affine maps (output coords -> input coords, normalised)."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


@_register("zoom_blur", "blur", (0.06, 0.11, 0.16, 0.22, 0.30), "mean of zoomed-in copies up to 1 + z")
def zoom_blur(x: Tensor, zoom: float, g: torch.Generator) -> Tensor:
    steps = 8
    acc = x.clone()
    for i in range(1, steps + 1):
        z = 1.0 + zoom * i / steps
        theta = torch.tensor([[1 / z, 0.0, 0.0], [0.0, 1 / z, 0.0]]).expand(x.shape[0], 2, 3)
        acc += _affine(x, theta, padding="border")
    return acc / (steps + 1)


# -- photometric ----------------------------------------------------------------------------------

@_register("contrast", "digital", (0.7, 0.5, 0.35, 0.2, 0.1), "shrink towards the image mean by factor c")
def contrast(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


@_register("brightness", "weather", (0.1, 0.2, 0.3, 0.4, 0.5), "add b to every pixel and channel (a value shift)")
def brightness(x: Tensor, b: float, g: torch.Generator) -> Tensor:
    return x + b


def _plasma(n: int, h: int, w: int, g: torch.Generator, decay: float = 0.6) -> Tensor:
    """Multi-octave value noise in [0, 1] (a diamond-square-like fractal): random grids of size
    2, 4, 8, ... bicubically upsampled, amplitude multiplied by `decay` per octave."""
    size = max(h, w)
    octaves = max(1, int(math.ceil(math.log2(size))))
    acc = torch.zeros(n, 1, h, w)
    amp = 1.0
    for o in range(1, octaves + 1):
        cells = 2**o
        coarse = torch.rand(n, 1, cells + 1, cells + 1, generator=g)
        acc += amp * F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        amp *= decay
    lo = acc.amin(dim=(2, 3), keepdim=True)
    hi = acc.amax(dim=(2, 3), keepdim=True)
    return (acc - lo) / (hi - lo).clamp_min(1e-8)


@_register("fog", "weather", (0.15, 0.25, 0.35, 0.45, 0.6), "blend towards a bright fractal fog map, opacity a")
def fog(x: Tensor, opacity: float, g: torch.Generator) -> Tensor:
    n, c, h, w = x.shape
    haze = (0.4 + 0.6 * _plasma(n, h, w, g)).to(x)  # bright, patchy
    return (1 - opacity) * x + opacity * haze


# -- digital --------------------------------------------------------------------------------------

@_register("pixelate", "digital", (2.0, 3.0, 4.0, 5.0, 6.0), "average over b x b pixel blocks, b in px at 32 px")
def pixelate(x: Tensor, block: float, g: torch.Generator) -> Tensor:
    # Whole-pixel blocks (never resampling by a fractional factor, whose aliasing makes the damage
    # non-monotone in the factor); the block grows by at least one pixel per severity.
    severity = PIXELATE_BLOCKS.index(block)
    b = 0
    for base in PIXELATE_BLOCKS[: severity + 1]:
        b = max(b + 1, round(base * _scale(x)))
    n, c, h, w = x.shape
    ph, pw = (-h) % b, (-w) % b
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    small = F.avg_pool2d(xp, b)
    return small.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)[:, :, :h, :w]


PIXELATE_BLOCKS = (2.0, 3.0, 4.0, 5.0, 6.0)


@_register("jpeg", "digital", (50.0, 30.0, 18.0, 10.0, 5.0), "JPEG compression (PIL) at quality q")
def jpeg(x: Tensor, quality: float, g: torch.Generator) -> Tensor:
    from PIL import Image

    arr = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = np.empty_like(arr)
    n, c = arr.shape[:2]
    for i in range(n):
        planes = [arr[i].transpose(1, 2, 0)] if c == 3 else [arr[i, j] for j in range(c)]
        decoded = []
        for plane in planes:
            buf = io.BytesIO()
            Image.fromarray(plane, mode="RGB" if plane.ndim == 3 else "L").save(buf, format="JPEG", quality=int(quality))
            decoded.append(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
        out[i] = decoded[0].transpose(2, 0, 1) if c == 3 else np.stack(decoded)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255.0


def _gauss_smooth(field: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = field.shape
    f = field.reshape(n * c, 1, h, w)
    mode = "reflect" if radius < min(h, w) else "replicate"
    f = F.conv2d(F.pad(f, (radius, radius, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    f = F.conv2d(F.pad(f, (0, 0, radius, radius), mode=mode), k.view(1, 1, -1, 1))
    return f.reshape(n, c, h, w)


def _identity_grid(n: int, h: int, w: int) -> Tensor:
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    return F.affine_grid(theta, [n, 1, h, w], align_corners=False)


@_register("elastic", "digital", (0.5, 0.8, 1.1, 1.5, 2.0), "smooth random displacement field, RMS px at 32 px")
def elastic(x: Tensor, rms: float, g: torch.Generator) -> Tensor:
    n, c, h, w = x.shape
    sigma = 3.0 * _scale(x)
    field = _gauss_smooth(torch.randn(n, 2, h, w, generator=g), sigma)
    field = field / field.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)
    disp_px = rms * _scale(x) * field  # pixels
    # pixels -> normalised grid units (a pixel is 2 / size)
    disp = torch.stack([disp_px[:, 0] * 2 / w, disp_px[:, 1] * 2 / h], dim=-1)
    grid = (_identity_grid(n, h, w) + disp).to(x)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _signs(n: int, g: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=g).float() * 2 - 1


@_register("rotate", "geometric", (6.0, 12.0, 18.0, 25.0, 35.0), "rotation by +-degrees (random sign), black fill")
def rotate(x: Tensor, degrees: float, g: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    a = _signs(n, g) * math.radians(degrees)
    cos, sin = torch.cos(a), torch.sin(a)
    # normalised coords on a non-square image: rotate in pixel units
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    return _affine(x, theta)


@_register("shear", "geometric", (0.08, 0.16, 0.24, 0.33, 0.45), "horizontal or vertical shear by +-s (random), black fill")
def shear(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    n = x.shape[0]
    sign = _signs(n, g)
    vertical = torch.rand(n, generator=g) < 0.5
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 1] = torch.where(vertical, 0.0, sign * s)
    theta[:, 1, 0] = torch.where(vertical, sign * s, 0.0)
    return _affine(x, theta)


@_register("translate", "geometric", (0.04, 0.08, 0.12, 0.17, 0.23), "shift by a fraction of the size in a random direction, black fill")
def translate(x: Tensor, frac: float, g: torch.Generator) -> Tensor:
    n = x.shape[0]
    a = torch.rand(n, generator=g) * 2 * math.pi
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * frac * torch.cos(a)  # normalised units: the image spans 2
    theta[:, 1, 2] = 2 * frac * torch.sin(a)
    return _affine(x, theta)


def corruption_names() -> list[str]:
    """Registered corruptions in a stable, family-grouped order (the order of the tables)."""
    order = ("noise", "blur", "weather", "digital", "geometric")
    items = [CORRUPTIONS.get(n) for n in CORRUPTIONS.names()]
    return [c.name for c in sorted(items, key=lambda c: (order.index(c.family), _ORDER.index(c.name)))]


_ORDER = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
    "brightness", "fog", "contrast", "pixelate", "jpeg", "elastic", "rotate", "shear", "translate",
]
