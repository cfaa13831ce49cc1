"""Procedural corruptions: identity at severity 0, monotone damage, range, determinism, closed forms."""
from __future__ import annotations

import pytest
import torch

from ssbench.analysis.corruptions import CORRUPTIONS, corrupt, corruption_names
from ssbench.errors import SpecError, SsbenchError

NAMES = corruption_names()
EXPECTED = {
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur", "contrast",
    "brightness", "fog", "pixelate", "jpeg", "elastic", "rotate", "shear", "translate",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def shapes(n: int, c: int, s: int, seed: int = 0) -> torch.Tensor:
    """Discs of random colour on a dark background plus faint texture: object-like test images."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
    out = torch.zeros(n, c, s, s)
    for i in range(n):
        for _ in range(3):
            cx, cy, r = (torch.rand(3, generator=g) * torch.tensor([s, s, s / 3])).tolist()
            colour = torch.rand(c, 1, 1, generator=g)
            m = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r + 4).float()
            out[i] = out[i] * (1 - m) + colour * m
        out[i] += 0.1 * torch.rand(c, s, s, generator=g)
    return out.clamp(0, 1)


BATCHES = {"28x28x1": shapes(16, 1, 28), "32x32x3": shapes(16, 3, 32, seed=1)}


def test_registry_has_the_fifteen_corruptions():
    assert set(NAMES) == EXPECTED == set(CORRUPTIONS.names())


@pytest.mark.parametrize("size", list(BATCHES))
@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, size: str):
    x = BATCHES[size]
    assert torch.equal(corrupt(x, name, 0, seed=5), x)
    dist = []
    for sev in range(6):
        out = corrupt(x, name, sev, seed=5)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(out, corrupt(x, name, sev, seed=5)), "not deterministic under the seed"
        dist.append(float((out - x).flatten(1).norm(dim=1).mean()))
    assert dist[0] == 0.0
    assert all(b > a for a, b in zip(dist[1:], dist[2:])), f"{name}: mean distance not increasing: {dist}"
    assert dist[1] > 0


def test_input_is_not_modified_and_other_sizes_work():
    x = shapes(4, 1, 8)  # 8x8 digits
    keep = x.clone()
    for name in NAMES:
        out = corrupt(x, name, 3, seed=0)
        assert out.shape == x.shape
        assert not torch.equal(out, x), f"{name} is the identity on 8x8 images"
    assert torch.equal(x, keep)
    rect = torch.rand(2, 3, 20, 36)
    for name in NAMES:
        assert corrupt(rect, name, 5).shape == rect.shape


def test_random_corruptions_depend_on_seed():
    x = BATCHES["32x32x3"]
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog", "elastic", "rotate", "translate"):
        assert not torch.equal(corrupt(x, name, 2, seed=0), corrupt(x, name, 2, seed=1)), name


def test_closed_forms():
    x = BATCHES["32x32x3"]
    c = CORRUPTIONS.get("contrast").params[2]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(corrupt(x, "contrast", 3), (x - mean) * c + mean)
    b = CORRUPTIONS.get("brightness").params[1]
    assert torch.allclose(corrupt(x, "brightness", 2), (x + b).clamp(0, 1))
    grey = torch.full((8, 1, 32, 32), 0.5)
    noisy = corrupt(grey, "gaussian_noise", 1, seed=0)
    assert float((noisy - grey).std()) == pytest.approx(CORRUPTIONS.get("gaussian_noise").params[0], rel=0.05)
    amount = CORRUPTIONS.get("impulse_noise").params[4]
    hit = corrupt(grey, "impulse_noise", 5, seed=0) != grey
    assert float(hit.float().mean()) == pytest.approx(amount, rel=0.1)
    # shot noise: Poisson(lambda x) / lambda has mean x and variance x / lambda (no clipping at 0.2)
    dark = torch.full((8, 1, 32, 32), 0.2)
    shot = corrupt(dark, "shot_noise", 1, seed=0)
    photons = CORRUPTIONS.get("shot_noise").params[0]
    assert float(shot.mean()) == pytest.approx(0.2, abs=0.005)
    assert float(shot.var()) == pytest.approx(0.2 / photons, rel=0.1)


def test_pixelate_makes_constant_blocks_with_the_block_mean():
    x = torch.rand(2, 3, 32, 32)
    out = corrupt(x, "pixelate", 1)  # 2x2 blocks at 32 px
    blocks = x.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))
    assert torch.allclose(out, blocks.repeat_interleave(2, 2).repeat_interleave(2, 3), atol=1e-6)


def test_blurs_keep_a_constant_image():
    flat = torch.full((2, 3, 28, 28), 0.3)
    for name in ("defocus_blur", "motion_blur", "zoom_blur", "elastic", "pixelate"):
        assert torch.allclose(corrupt(flat, name, 5, seed=1), flat, atol=1e-6), name


def test_jpeg_of_a_smooth_image_is_close_and_of_noise_is_far():
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    d_smooth = float((corrupt(smooth, "jpeg", 3) - smooth).abs().mean())
    d_noise = float((corrupt(noise, "jpeg", 3) - noise).abs().mean())
    assert d_smooth < 0.05 < d_noise


def test_bad_names_and_severities_are_one_line_errors():
    with pytest.raises(SsbenchError, match="unknown corruption 'snow'; choose from"):
        corrupt(BATCHES["28x28x1"], "snow", 1)
    with pytest.raises(SpecError, match="0..5"):
        corrupt(BATCHES["28x28x1"], "fog", 6)
