"""Attack a bare model and batch, no store: ``ssbench.attack(model, x, y, "pgd", eps=8/255)``.

The same engine as ``ssbench attack`` (``run_sweep`` with one epsilon, the same seeds and batching,
clean-wrong examples left as they are), so the adversarials equal those of a CLI sweep of the same
examples with ``--eps`` that one value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ssbench.attacks.base import make_attack
from ssbench.attacks.modes import QUERY_MODE, gradient_source
from ssbench.attacks.sweep import run_sweep
from ssbench.errors import SpecError


@dataclass
class AttackResult:
    adversarial: Tensor  # (n, ...) the images; clean-wrong examples are returned unchanged
    success: Tensor  # (n,) bool: the model gets the adversarial wrong (clean-wrong examples included)
    clean_correct: Tensor  # (n,) bool
    attack: str
    mode: str
    eps: float
    params: dict[str, Any]

    @property
    def robust_accuracy(self) -> float:
        return float((~self.success).float().mean())


def attack(
    model: nn.Module, x: Tensor, y: Tensor, attack: str = "pgd", eps: float = 8 / 255, *,
    mode: str = "exact", steps: int | None = None, loss: str | None = None, seed: int = 0, batch_size: int = 256,
    surrogate: nn.Module | None = None,
) -> AttackResult:
    """Attack ``model`` (a classifier, inputs in [0, 1]) on the batch ``(x, y)`` at budget ``eps``.

    ``mode``: whose gradient the attacker follows: ``exact`` (the true gradient of the model's forward,
    also for a rule-converted model), ``feedback`` (the model's own backward: for a non-BP rule a
    pseudo-gradient, what the papers measured) or ``transfer`` (``surrogate``'s). Black-box attacks
    (square, onepixel, boundary, hsj) only query the model, whatever the mode. ``steps``, ``loss``,
    ``seed``: as ``ssbench attack --steps/--loss/--seed``.
    """
    atk = make_attack(attack, steps=steps, seed=seed, loss=loss)
    if atk.suite == "hashing":
        raise SpecError(f"attack {attack} attacks hashing models; ssbench.attack takes a classifier")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y):
        raise SpecError("ssbench.attack: x and y must be tensors of the same length")
    was = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        with gradient_source(mode if atk.uses_gradients else QUERY_MODE, model, surrogate) as g:
            curve = run_sweep(atk, model, g, x, y.to(x.device), [float(eps)], mode=mode, batch_size=batch_size,
                              pool=(x, y.to(x.device)), keep_adversarials=True)
    finally:
        for name, m in model.named_modules():
            m.training = was.get(name, m.training)
    k = len(curve.eps) - 1  # an attack with its own budget grid (onepixel) ends at its largest budget
    return AttackResult(curve.adversarials[k], ~curve.scores[k].to(x.device), curve.clean.to(x.device), atk.name,
                        mode if atk.uses_gradients else QUERY_MODE, curve.eps[k], curve.params[k])
