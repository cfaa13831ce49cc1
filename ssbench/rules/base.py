"""What a learning rule is: a recipe for the feedback tensor B of each converted layer."""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ssbench.registry import Registry

if TYPE_CHECKING:
    from ssbench.rules.layers import FeedbackLayer

RULES: Registry[type[Rule]] = Registry("rule")


def rms(t: Tensor) -> Tensor:
    """Root mean square: the per-entry scale for which ||s * sign(W)|| == ||W||."""
    return t.detach().pow(2).mean().sqrt()


def layer_generator(seed: int, layer_index: int, step: int = 0) -> torch.Generator:
    """A private CPU generator per (seed, layer, step): reproducible on any device, and it never
    touches torch's global RNG (so a rule cannot change the data order or dropout masks)."""
    mixed = (seed * 1_000_003 + layer_index * 7_919 + step * 104_729) % (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


def draw_normal(shape: torch.Size, like: Tensor, gen: torch.Generator) -> Tensor:
    """N(0, 1) draw on the CPU generator (same numbers on any device), in like's float precision."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.randn(shape, generator=gen, dtype=dtype).to(device=like.device, dtype=like.dtype)


class Rule:
    """Base class. Subclasses set `name` and implement `feedback` (and `init_state` if stateful).

    * `init_state(W, gen)` runs once, at conversion, with the converted (e.g. pretrained) W, and
      returns the tensor the rule keeps (stored as the layer's `feedback_state` buffer) or None.
    * `feedback(layer)` returns the B used in backward for the layer's current W and state.
    """

    name: ClassVar[str]
    per_step: ClassVar[bool] = False  # True: B is redrawn each training step (brsf)
    direct: ClassVar[bool] = False  # True: DFA-style error broadcast from the output

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor | None:
        return None

    def feedback(self, layer: FeedbackLayer) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, float | int | str | None]:
        """Options that define the rule (persisted next to checkpoints)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({opts})"
