"""What a learning rule is: a recipe for the feedback tensor B of each converted layer."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor, nn

from ssbench.errors import SpecError
from ssbench.registry import Registry
from ssbench.specs import gaussian_feedback_var

if TYPE_CHECKING:
    from ssbench.rules.layers import FeedbackLayer

RULES: Registry[type[Rule]] = Registry("rule")

Init = Literal["default", "xavier", "gaussian"]
INITS: tuple[Init, ...] = ("default", "xavier", "gaussian")
WEIGHT_STREAM = -1  # the `step` of the generator that re-initialises W (brsf's steps are >= 0)


def rms(t: Tensor) -> Tensor:
    """Root mean square: the per-entry scale for which ||s * sign(W)|| == ||W||."""
    if t.requires_grad:
        t = t.detach()
    return torch.linalg.vector_norm(t) / math.sqrt(t.numel())  # one reduction, no squared copy


def init_rms(weight: Tensor) -> float:
    """Per-entry std a fresh nn.Linear / nn.Conv2d of W's shape gets from torch's default init.

    reset_parameters() uses kaiming_uniform_(a=sqrt(5)): U(-b, b) with b = gain * sqrt(3 / fan_in)
    and gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), so b = 1/sqrt(fan_in) and std = b / sqrt(3) =
    1 / sqrt(3 fan_in). fan_in = in_features (linear) or in_channels/groups * kh * kw (conv), i.e.
    the size of one output unit's slice W[0] in both cases.
    """
    return 1.0 / math.sqrt(3.0 * weight[0].numel())


def reference_rms(weight: Tensor) -> Tensor:
    """rms(W), or the init scale of W's shape where W is all zeros (torchvision's ViT head): a
    feedback tensor scaled to a zero W would be zero and block the error for every layer below."""
    s = rms(weight)
    return s if bool(s > 0) else torch.full_like(s, init_rms(weight))


def draw_at_weight_norm(weight: Tensor, gen: torch.Generator) -> Tensor:
    """N(0, 1) tensor of W's shape scaled to norm ||W|| (the init norm of W's shape for a zero W):
    the fixed random feedback of fa and frsf, at the scale of the weight it stands in for."""
    r = draw_normal(weight.shape, weight, gen)
    return r * (reference_rms(weight) * math.sqrt(weight.numel()) / r.norm())


def fans(weight: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init's xavier computes them: W.shape[1] and W.shape[0], each
    times the receptive field (kh * kw for a conv kernel)."""
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def xavier_bound(fan_in: int, fan_out: int) -> float:
    """Half-width of xavier_uniform_ (gain 1): U(-b, b), b = sqrt(6 / (fan_in + fan_out))."""
    return math.sqrt(6.0 / (fan_in + fan_out))


def xavier_std(weight: Tensor) -> float:
    """Std of xavier_uniform_ for W's shape, sqrt(2 / (fan_in + fan_out)): BioTorch's uSF scale."""
    return xavier_bound(*fans(weight)) / math.sqrt(3.0)


def draw_uniform(shape: torch.Size, bound: float, like: Tensor, gen: torch.Generator) -> Tensor:
    """U(-bound, bound) in float32 on gen's device, cast to like's dtype and device (from a CPU
    generator: the same numbers on every device and in every precision, as `draw_normal`)."""
    t = torch.empty(shape, dtype=torch.float32, device=gen.device).uniform_(-bound, bound, generator=gen)
    return t.to(device=like.device, dtype=like.dtype)


def draw_xavier(weight: Tensor, gen: torch.Generator) -> Tensor:
    """A xavier_uniform_ draw of W's shape: BioTorch's fixed random feedback (fa, frsf, brsf)."""
    return draw_uniform(weight.shape, xavier_bound(*fans(weight)), weight, gen)


def xavier_init_(layer: nn.Module, seed: int, layer_index: int) -> None:
    """BioTorch's from-scratch init of a layer: W xavier_uniform_, bias 0 (BioTorch's layers set
    the bias to 0 with init 'xavier'). W comes from its own seeded stream, not the one B is drawn
    from, so B is never a copy of W's numbers."""
    gen = layer_generator(seed, layer_index, WEIGHT_STREAM)
    w = layer.weight
    with torch.no_grad():
        w.copy_(nn.init.xavier_uniform_(torch.empty(w.shape, dtype=torch.float32), generator=gen))
        if getattr(layer, "bias", None) is not None:
            layer.bias.zero_()


def gaussian_std(weight: Tensor, var: float) -> float:
    """Std of N(0, var / fan_in) for W's shape (fan_in as `fans`): var 1 is LeCun's init, var 2 He's."""
    return math.sqrt(var / fans(weight)[0])


def draw_gaussian(weight: Tensor, var: float, gen: torch.Generator) -> Tensor:
    """N(0, var / fan_in) of W's shape (init gaussian): `draw_normal` scaled, same numbers on any device."""
    return draw_normal(weight.shape, weight, gen) * gaussian_std(weight, var)


def reinit_(layer: nn.Module, init: Init, weight_var: float | None, seed: int, layer_index: int) -> None:
    """From-scratch re-init of a layer for init xavier (`xavier_init_`) or gaussian (W ~ N(0,
    weight_var / fan_in), bias 0); default leaves it alone. W is drawn from its own seeded stream,
    never the one B is drawn from, so B is never a copy of W's numbers."""
    if init == "xavier":
        xavier_init_(layer, seed, layer_index)
    elif init == "gaussian":
        gen = layer_generator(seed, layer_index, WEIGHT_STREAM)
        w = layer.weight
        with torch.no_grad():
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32) * gaussian_std(w, float(weight_var)))
            if getattr(layer, "bias", None) is not None:
                layer.bias.zero_()


def mixed_seed(seed: int, index: int, step: int) -> int:
    """One seed from (seed, index, step): a layer's stream per step here, a data-parallel rank's per
    epoch in training/distributed.py."""
    return (seed * 1_000_003 + index * 7_919 + step * 104_729) % (2**63 - 1)


def layer_generator(
    seed: int, layer_index: int, step: int = 0, reuse: torch.Generator | None = None
) -> torch.Generator:
    """A private CPU generator per (seed, layer, step): reproducible on any device, and it never
    touches torch's global RNG (so a rule cannot change the data order or dropout masks).
    `reuse` re-seeds an existing generator, of any device, instead of building one (brsf re-seeds
    its layer's device generator every step)."""
    gen = reuse if reuse is not None else torch.Generator(device="cpu")
    return gen.manual_seed(mixed_seed(seed, layer_index, step))


def draw_normal(shape: torch.Size, like: Tensor, gen: torch.Generator) -> Tensor:
    """N(0, 1) draw in float32 on gen's device, then cast to like's dtype and device. From a CPU
    generator (every draw but brsf's per-step one): the same numbers (up to rounding) on every
    device and in every precision, so a float64 copy of a model (gradient checks) has the very B
    of the float32 original."""
    t = torch.randn(shape, generator=gen, dtype=torch.float32, device=gen.device)
    return t.to(device=like.device, dtype=like.dtype)


class Rule:
    """Base class. Subclasses set `name` and implement `feedback` (and `init_state` if stateful).

    * `init_state(W, gen)` runs once, at conversion, with the converted (e.g. pretrained) W, and
      returns the tensor the rule keeps (stored as the layer's `feedback_state` buffer) or None.
    * `feedback(layer)` returns the B used in backward for the layer's current W and state.
    """

    name: ClassVar[str]
    per_step: ClassVar[bool] = False  # True: B is redrawn each training step (brsf)
    direct: ClassVar[bool] = False  # True: DFA-style error broadcast from the output

    def __init__(self, init: Init = "default", weight_var: float | None = None, feedback_var: float | None = None) -> None:
        if init not in INITS:
            raise SpecError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        for name, v in (("weight_var", weight_var), ("feedback_var", feedback_var)):
            if v is not None and not float(v) > 0:
                raise SpecError(f"{name} must be > 0, got {v}")
        try:  # the same rules as RuleSpec's, so a rule built by hand cannot hold what a spec refuses
            feedback_var = gaussian_feedback_var(self.name, init, weight_var, feedback_var)
        except ValueError as err:
            raise SpecError(str(err)) from None
        self.init: Init = init
        self.weight_var = None if weight_var is None else float(weight_var)
        self.feedback_var = feedback_var  # init gaussian: variance x fan_in of the random feedback

    @property
    def xavier(self) -> bool:
        """BioTorch's initialisation: B drawn xavier-uniform instead of at the converted W's scale."""
        return self.init == "xavier"

    @property
    def shape_scaled(self) -> bool:
        """B's scale is a constant of the layer's shape (init xavier or gaussian), not W's current scale."""
        return self.init != "default"

    def draw(self, weight: Tensor, gen: torch.Generator) -> Tensor:
        """The rule's random tensor of W's shape: N(0, 1) (default; rules rescale it), xavier-uniform,
        or N(0, feedback_var / fan_in) (gaussian)."""
        if self.init == "gaussian":
            return draw_gaussian(weight, float(self.feedback_var), gen)  # type: ignore[arg-type]
        return draw_xavier(weight, gen) if self.xavier else draw_normal(weight.shape, weight, gen)

    def shape_std(self, weight: Tensor) -> float:
        """Per-entry std of `draw` for W's shape with init xavier or gaussian (usf's magnitude)."""
        return gaussian_std(weight, float(self.feedback_var)) if self.init == "gaussian" else xavier_std(weight)  # type: ignore[arg-type]

    def init_weight_(self, layer: nn.Module, seed: int, layer_index: int) -> None:
        """Training from scratch: W re-initialised as the init says (see `reinit_`)."""
        reinit_(layer, self.init, self.weight_var, seed, layer_index)

    def init_state(self, weight: Tensor, gen: torch.Generator) -> Tensor | None:
        return None

    def feedback(self, layer: FeedbackLayer) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, float | int | str | None]:
        """Options that define the rule (persisted next to checkpoints). `init` only where it is not
        the default, so configs (and config hashes) of default runs are what they always were; the
        variances only with init gaussian (feedback_var not for bp / ifa)."""
        out: dict[str, float | int | str | None] = {"name": self.name}
        if self.init != "default":
            out["init"] = self.init
        if self.init == "gaussian":
            out["weight_var"] = self.weight_var
            if self.feedback_var is not None:
                out["feedback_var"] = self.feedback_var
        return out

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({opts})"
