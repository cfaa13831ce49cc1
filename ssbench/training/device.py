"""Device choice and seeding."""
from __future__ import annotations

import random

import numpy as np
import torch

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


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
