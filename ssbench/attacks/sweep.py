"""Epsilon sweeps: attack the clean-correct examples, walk epsilon upward on the survivors.

The fast sweep rests on one stated rule: *an example broken at budget e counts as broken at every
budget e' > e*. It is sound by containment for norm-ball attacks (the adversarial found at e lies
inside every larger ball, so the reported curve is the robust accuracy against "this attack at any
budget <= e"), and it is how minimum-norm attacks are read anyway. Points swept this way carry
``params["sweep"] = "cumulative"`` and ``params["monotone_assumption"] = True``. Against the naive
loop (attack everything at every epsilon) the curve can only be lower or equal, and equal where the
naive loop's own curve is monotone per example; ``fast=False`` runs the naive loop.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ssbench.attacks.base import Attack
from ssbench.attacks.starting import predict

BUDGET_TOL = 1e-5  # float rounding of x + clamp(delta) in torchattacks


def select_indices(n_total: int, n: int, seed: int) -> list[int]:
    """The first n of a fixed seeded permutation of the test set (stored with the attack run)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[: min(n, n_total)].tolist()


def stack_examples(dataset: Any, indices: Sequence[int], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    xs, ys = zip(*(dataset[i] for i in indices))
    x = torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in xs]).to(device)
    y = torch.as_tensor([int(t) for t in ys], dtype=torch.long, device=device)
    return x, y


@dataclass
class SweepCurve:
    """One attack x one mode over an epsilon grid; ``correct[k]`` is per example (fixed order)."""

    attack: str
    mode: str
    n: int
    eps: list[float] = field(default_factory=list)
    correct: list[Tensor] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)
    norm: str = "linf"

    def robust(self) -> list[float]:
        return [float(c.float().mean()) for c in self.correct]

    def at(self, eps: float) -> float | None:
        for e, c in zip(self.eps, self.correct):
            if abs(e - eps) < 1e-9:
                return float(c.float().mean())
        return None

    def bitstring(self, k: int) -> str:
        return "".join("1" if b else "0" for b in self.correct[k].tolist())

    def to_points(self) -> list[Any]:
        from ssbench.store.records import SweepPoint

        return [
            SweepPoint(
                attack=self.attack, mode=self.mode, epsilon=e, n=self.n, robust=float(c.float().mean()),
                metric="accuracy", seconds=s, params=p, correct=self.bitstring(k),
            )
            for k, (e, c, s, p) in enumerate(zip(self.eps, self.correct, self.seconds, self.params))
        ]


def check_budget(attack: Attack, x: Tensor, adv: Tensor, eps: float) -> None:
    """Refuse adversarials outside the threat model: a bug in an attack must not pass as a result."""
    if adv.shape != x.shape or adv.min() < -BUDGET_TOL or adv.max() > 1 + BUDGET_TOL:
        raise RuntimeError(f"{attack.name}: adversarial images left [0, 1]")
    if attack.norm == "linf":
        worst = float((adv - x).abs().max()) if len(x) else 0.0
        if worst > eps + BUDGET_TOL:
            raise RuntimeError(f"{attack.name}: linf perturbation {worst:.6f} exceeds eps {eps}")
    elif attack.norm == "l0":
        changed = (adv != x).any(dim=1).flatten(1).sum(1)  # pixel positions, all channels together
        if len(x) and int(changed.max()) > int(eps):
            raise RuntimeError(f"{attack.name}: {int(changed.max())} pixels changed, budget {int(eps)}")


def run_sweep(
    attack: Attack,
    target: nn.Module,
    grad_model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_grid: Sequence[float],
    *,
    mode: str,
    batch_size: int = 256,
    fast: bool = True,
    pool: tuple[Tensor, Tensor] | None = None,
    on_eps: Callable[[float], None] | None = None,
    standing: dict[float, Tensor] | None = None,
) -> SweepCurve:
    """Sweep ``attack`` crafted on ``grad_model`` and judged by ``target``'s forward.

    Robust accuracy at each epsilon is over ALL n examples (clean-wrong ones count as wrong).
    ``standing`` (ensembles): per epsilon, the examples every earlier attack of the ensemble left
    standing. Only those are attacked and can count as robust, so the curve is cumulative over the
    ensemble so far (AutoAttack's protocol: each attack runs on the survivors of the ones before).
    """
    grid = sorted(set(float(e) for e in (attack.budget_grid if attack.budget_grid is not None else eps_grid)))
    curve = SweepCurve(attack=attack.name, mode=mode, n=len(x), norm=attack.norm)
    was_training = {n: m.training for n, m in target.named_modules()}
    target.eval()
    try:
        clean_correct = predict(target, x, batch_size) == y
        if attack.minimum_norm:
            _min_norm_sweep(attack, target, x, y, grid, clean_correct, curve, batch_size, pool, on_eps)
            return curve
        alive = clean_correct.clone()
        directions = _directions(attack, grad_model, x, y, clean_correct, batch_size) if fast else None
        for k, eps in enumerate(grid):
            t0 = time.perf_counter()
            still = standing[eps].to(x.device) if standing is not None else None
            if still is not None and fast:
                alive &= still
            base = alive if fast else (clean_correct if still is None else clean_correct & still)
            idx = base.nonzero().flatten()
            if eps == 0:  # all n examples, re-predicted in another order / batching (sanity check f)
                correct = _eps0_correct(attack, grad_model, target, x, y, batch_size)
                if still is not None:
                    correct &= still
                if fast:
                    alive &= correct
            else:
                broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
                for b in range(0, len(idx), batch_size):
                    j = idx[b : b + batch_size]
                    if directions is not None:  # one gradient for the whole grid (FGSM)
                        adv = (x[j] + eps * directions[j]).clamp(0, 1)
                    else:
                        adv = attack.perturb(grad_model, x[j], y[j], eps, call=k * 100_003 + b)
                    check_budget(attack, x[j], adv, eps)
                    broken[j] = predict(target, adv, batch_size) != y[j]
                if fast:
                    alive &= ~broken
                    correct = alive.clone()
                else:
                    correct = base & ~broken
            curve.eps.append(eps)
            curve.correct.append(correct.cpu())
            curve.seconds.append(time.perf_counter() - t0)
            curve.params.append(
                {**attack.params(eps), "sweep": "cumulative" if fast else "per-eps", "monotone_assumption": fast,
                 "attacked": len(idx)}
            )
            if on_eps:
                on_eps(eps)
        return curve
    finally:
        for n, m in target.named_modules():
            m.training = was_training.get(n, m.training)


def repredict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``predict`` in reversed order and in chunks of another size than ``batch_size``: a forward
    that is a function of each image alone gives the same labels; one that depends on the batch
    (BatchNorm statistics or dropout active despite eval()) or on run-to-run randomness does not."""
    chunk = batch_size // 2 + 1 if batch_size > 2 else batch_size + 1
    rev = torch.arange(len(x) - 1, -1, -1, device=x.device)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    out[rev] = predict(model, x[rev], chunk)
    return out


def _eps0_correct(attack: Attack, grad_model: nn.Module, target: nn.Module, x: Tensor, y: Tensor,
                  batch_size: int) -> Tensor:
    """Per example: the target's label on what the attack returns at eps 0 (x itself, no model
    call), over ALL n examples, clean-wrong ones included, so flips both ways show in check (f)."""
    adv = torch.cat([attack.perturb(grad_model, x[b : b + batch_size], y[b : b + batch_size], 0.0)
                     for b in range(0, len(x), batch_size)]) if len(x) else x
    check_budget(attack, x, adv, 0.0)
    return repredict(target, adv, batch_size) == y


def _directions(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, rows: Tensor, batch_size: int) -> Tensor | None:
    """Fixed perturbation directions of the examples in ``rows`` (zeros elsewhere), or None."""
    idx = rows.nonzero().flatten()
    out = torch.zeros_like(x)
    for b in range(0, len(idx), batch_size):
        j = idx[b : b + batch_size]
        d = attack.direction(model, x[j], y[j])
        if d is None:  # not a fixed-direction attack: asked once, on the first batch
            return None
        out[j] = d
    return out if len(idx) else None


def _min_norm_sweep(attack, target, x, y, grid, clean_correct, curve, batch_size, pool, on_eps) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    pool_x, pool_y = pool if pool is not None else (x, y)
    idx = clean_correct.nonzero().flatten()
    dist = torch.full((len(x),), float("inf"), device=x.device)
    for b in range(0, len(idx), batch_size):
        j = idx[b : b + batch_size]
        adv, d = attack.min_distance(target, x[j], y[j], pool_x=pool_x, pool_y=pool_y, call=b)
        dist[j] = d
    total = time.perf_counter() - t0
    for eps in grid:
        if eps == 0:  # re-predicted like the budgeted attacks' eps-0 point (sanity check f)
            correct = (repredict(target, x, batch_size) == y) & ~(dist <= 0)
        else:
            correct = clean_correct & ~(dist <= eps + 1e-7)
        curve.eps.append(eps)
        curve.correct.append(correct.cpu())
        curve.seconds.append(total / len(grid))
        curve.params.append(
            {**attack.params(eps), "sweep": "minimum-norm", "monotone_assumption": True,
             "seconds_total": total, "attacked": len(idx)}
        )
        if on_eps:
            on_eps(eps)
