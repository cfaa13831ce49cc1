"""Device choice, memory format and seeding."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor, nn

from ssbench.errors import SpecError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when present, else cpu; an explicit device that isn't there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise SpecError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return dev


def memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """`model` (in place) with its 4-D weights and buffers (conv kernels, their feedback B) in NHWC
    order when `channels_last`: with NHWC batches, convolutions on tensor cores read each pixel's
    channels contiguously and skip layout conversions. Values, and state_dict keys, do not change."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def batch_format(x: Tensor, channels_last: bool) -> Tensor:
    """An image batch (N x C x H x W) in NHWC order when `channels_last`; other inputs as they are."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
