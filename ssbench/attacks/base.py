"""The attack contract shared by every attack file, and the guards around third-party attacks.

An attack here is a small object built from hyper-parameters (steps, seed, ...). It crafts
adversarial examples for a *gradient module* (the network whose autograd the attacker sees, see
``modes.py``); robust accuracy is always measured elsewhere on the target's own forward.

Two shapes of attack exist:

* budgeted attacks (FGSM, PGD, APGD, TPGD, Square, OnePixel) answer ``perturb(model, x, y, eps)``
  for one budget at a time;
* minimum-norm attacks (Boundary, HopSkipJump) answer ``min_distance(...)`` once: the smallest
  adversarial they found and its L-inf distance; every epsilon is read off that one run.

Classification and hashing attacks share this contract and the one registry (``suite`` tells them
apart); how an adversarial is judged (accuracy, mAP) is the scorer's business, not the attack's.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ssbench.errors import SpecError
from ssbench.registry import Registry

Suite = Literal["whitebox", "blackbox", "hashing"]
Norm = Literal["linf", "l0"]


class Attack:
    """Base class. Subclasses set the class attributes and implement ``_perturb`` (budgeted)
    or ``_min_distance`` (minimum-norm)."""

    name: ClassVar[str]
    suite: ClassVar[Suite]
    norm: ClassVar[Norm] = "linf"
    uses_gradients: ClassVar[bool] = True  # False: only queries the target's forward ("query" mode)
    minimum_norm: ClassVar[bool] = False  # True: one run gives the whole epsilon curve
    single_step: ClassVar[bool] = False
    default_steps: ClassVar[int | None] = None
    budget_grid: ClassVar[tuple[float, ...] | None] = None  # own budget grid (e.g. pixels for l0)
    # Losses selectable with ``loss=`` (first = default). Empty: the attack's loss is fixed
    # (APGD-CE/DLR, TPGD's KL, the black-box attacks) and states it in its own params.
    loss_choices: ClassVar[tuple[str, ...]] = ()
    min_classes: ClassVar[int] = 2  # fewer classes than this: the attack is not defined
    # sanity check doubled_steps reruns the attack with twice its iterations; False where that
    # costs too much for a check (one targeted run per class)
    doubling_check: ClassVar[bool] = True
    # sanity check iterative_le_single_step: this attack must do at least as well as that single-step one
    compared_with: ClassVar[str | None] = None
    # True: ``_perturb`` also takes ``reference``, the labelled set the attacker knows (hashing: SDHA)
    uses_reference: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}  # options an attack always has (stored in its params)

    def __init__(self, *, steps: int | None = None, seed: int = 0, loss: str | None = None, **options: Any) -> None:
        self.steps = steps if steps is not None else self.default_steps
        self.seed = seed
        self.options = {**self.defaults, **options}
        if self.loss_choices:
            if loss is not None and loss not in self.loss_choices:
                raise SpecError(f"attack {self.name}: loss {loss!r} not one of {', '.join(self.loss_choices)}")
            self.loss = loss or self.loss_choices[0]
        elif loss is not None:
            raise SpecError(f"attack {self.name} has a fixed loss; --loss applies to {', '.join(loss_attacks())}")

    # -- what gets stored with every sweep point ---------------------------------------------
    def params(self, eps: float) -> dict[str, Any]:
        p: dict[str, Any] = {"norm": self.norm, "seed": self.seed}
        if self.steps is not None:
            p["steps"] = self.steps
        if self.loss_choices:
            p["loss"] = self.loss
        p.update(self.options)
        return p

    # -- budgeted attacks ----------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, *, call: int = 0,
                reference: Any = None) -> Tensor:
        """Adversarial examples within ``eps`` of ``x``. eps = 0 returns ``x`` unchanged with no
        model call (torchattacks would run all its steps for nothing). ``call`` varies the seed
        between batches / budgets while keeping every run reproducible. ``reference``: what the
        attacker knows besides the image, passed on to the attacks that use one."""
        if eps == 0:
            return x.detach().clone()
        known = {"reference": reference} if self.uses_reference else {}
        with eval_guard(model), seeded(self.seed * 1_000_003 + call, x.device):
            adv = self._perturb(model, x, y, float(eps), **known)
        return adv.detach()

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        raise NotImplementedError(f"{self.name} is a minimum-norm attack; use min_distance")

    def direction(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        """For attacks whose example is clamp(x + eps * d) with d independent of eps (FGSM): d.
        A sweep then needs one gradient per example for the whole grid, not one per eps."""
        return None

    # -- minimum-norm attacks ------------------------------------------------------------------
    def min_distance(
        self, model: nn.Module, x: Tensor, y: Tensor, *, pool_x: Tensor, pool_y: Tensor, call: int = 0
    ) -> tuple[Tensor, Tensor]:
        """(adversarials, L-inf distances); distance = inf where no adversarial was found.
        ``pool_x/pool_y``: test images the attack may start from (starting points)."""
        with eval_guard(model), seeded(self.seed * 1_000_003 + call, x.device):
            adv, dist = self._min_distance(model, x, y, pool_x, pool_y)
        return adv.detach(), dist.detach()

    def _min_distance(self, model, x, y, pool_x, pool_y) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        raise NotImplementedError(f"{self.name} is a budgeted attack; use perturb")


ATTACKS: Registry[type[Attack]] = Registry("attack")


def make_attack(name: str, *, steps: int | None = None, seed: int = 0, loss: str | None = None) -> Attack:
    """The registered attack ``name`` with the job's settings: ``steps`` reaches iterative gradient
    attacks only (black-box query budgets keep their defaults), ``loss`` only the attacks with a
    choice of loss (the others keep theirs and store it)."""
    cls = ATTACKS.get(name)
    return cls(steps=steps if (cls.uses_gradients and not cls.single_step) else None, seed=seed,
               loss=loss if cls.loss_choices else None)


def register(cls: type[Attack]) -> type[Attack]:
    ATTACKS.register(cls.name, help=(cls.__doc__ or "").strip().split("\n")[0])(cls)
    return cls


def suite_attacks(suite: str) -> list[str]:
    """Names of the attacks in a suite ('all' = white-box then black-box; an ensemble's in its order)."""
    from ssbench.attacks.ensemble import ENSEMBLES

    if suite in ENSEMBLES:
        return list(ENSEMBLES[suite])
    suites = ("whitebox", "blackbox") if suite == "all" else (suite,)
    return [n for s in suites for n in ATTACKS.names() if ATTACKS.get(n).suite == s]


def loss_attacks() -> list[str]:
    """Names of the attacks whose loss ``--loss`` selects."""
    return [n for n in ATTACKS.names() if ATTACKS.get(n).loss_choices]


@contextlib.contextmanager
def eval_guard(model: nn.Module) -> Iterator[None]:
    """Eval mode during the attack, every module's own flag restored after (even on error), and
    buffers (BatchNorm running statistics) proven unchanged.

    torchattacks' ``Attack.__call__`` switches modes without try/finally, and with
    ``set_model_training_mode(model_training=True)`` it puts an eval model in train mode (BatchNorm
    statistics then move with every adversarial batch) and never switches it back. We never call
    that setter, call ``forward`` ourselves inside this guard, and refuse (restore, then raise) if
    anything inside still moved a buffer: such a sweep would attack a different model.
    """
    flags = {name: m.training for name, m in model.named_modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.eval()
    changed: list[str] = []
    try:
        yield
    finally:
        for name, m in model.named_modules():
            m.training = flags.get(name, m.training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and not torch.equal(b, buffers[name]):
                    b.copy_(buffers[name])
                    changed.append(name)
    if changed:
        raise RuntimeError(f"the attack changed model buffers {changed[:3]} (train mode inside the attack?); restored")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch and numpy for one attack call and leave the caller's RNG streams untouched
    (torchattacks' Square/APGD call ``torch.random.manual_seed`` on the global generator)."""
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        try:
            yield
        finally:
            np.random.set_state(np_state)


def num_classes(model: nn.Module, x: Tensor) -> int:
    """Output width of a classifier, from one forward of one example."""
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def run_torchattack(atk: Any, x: Tensor, y: Tensor) -> Tensor:
    """Call a torchattacks attack's ``forward`` directly: skips ``__call__``'s mode switching
    (our ``eval_guard`` does it safely) and its normalisation hooks (our models normalise inside)."""
    return atk.forward(x, y)
