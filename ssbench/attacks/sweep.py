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

from ssbench.attacks.base import Attack, eval_guard
from ssbench.attacks.scoring import Accuracy, Scorer
from ssbench.attacks.starting import predict
from ssbench.errors import SpecError

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
    """One attack x one mode over an epsilon grid; ``scores[k]`` is per example (fixed order): bool
    for a binary scorer (correct), float otherwise (AP per query). ``extras[k]``: means of the
    scorer's other metrics at that point (retrieval: map@5000, map@all, precision@1000)."""

    attack: str
    mode: str
    n: int
    eps: list[float] = field(default_factory=list)
    scores: list[Tensor] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)
    norm: str = "linf"
    metric: str = "accuracy"
    binary: bool = True
    extras: list[dict[str, float]] = field(default_factory=list)
    adversarials: list[Tensor] = field(default_factory=list)  # per eps, with keep_adversarials=True
    clean: Tensor | None = None  # per-example score of the clean images, as `scores`

    @property
    def correct(self) -> list[Tensor]:
        """Per-example survival (binary scorers: what survivors, bitstrings and worst cases use)."""
        if not self.binary:
            raise ValueError(f"{self.attack}/{self.mode}: {self.metric} is graded, not correct / broken")
        return self.scores

    def robust(self) -> list[float]:
        return [float(c.float().mean()) for c in self.scores]

    def at(self, eps: float) -> float | None:
        for e, c in zip(self.eps, self.scores):
            if abs(e - eps) < 1e-9:
                return float(c.float().mean())
        return None

    def bitstring(self, k: int) -> str | None:
        return "".join("1" if b else "0" for b in self.scores[k].tolist()) if self.binary else None

    def to_points(self) -> list[Any]:
        from ssbench.store.records import SweepPoint

        extras = self.extras or [{}] * len(self.eps)
        return [
            SweepPoint(
                attack=self.attack, mode=self.mode, epsilon=e, n=self.n, robust=float(c.float().mean()),
                metric=self.metric, seconds=s, params={**p, **x}, correct=self.bitstring(k),
            )
            for k, (e, c, s, p, x) in enumerate(zip(self.eps, self.scores, self.seconds, self.params, extras))
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
    target: nn.Module | Scorer,
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
    reference: Any = None,
    keep_adversarials: bool = False,
) -> SweepCurve:
    """Sweep ``attack`` crafted on ``grad_model`` and judged by ``target``: a classifier (scored by
    accuracy) or any :class:`~ssbench.attacks.scoring.Scorer` (retrieval: AP@1000 per query).

    The robust number at each epsilon is the mean score over ALL n examples (clean-wrong ones count
    as 0). Binary scorers walk epsilon upward on the survivors (``fast``, see the module docstring);
    graded ones attack every example at every epsilon. ``standing`` (ensembles): per epsilon, the
    examples every earlier attack of the ensemble left standing. Only those are attacked and can
    count as robust, so the curve is cumulative over the ensemble so far (AutoAttack's protocol:
    each attack runs on the survivors of the ones before). ``reference``: what the attacker knows
    besides the image (hashing: the labelled reference codes), for the attacks that use one.
    ``keep_adversarials``: also keep, per eps, the images every example ends up as (the clean image
    where it was not attacked) in ``curve.adversarials`` (``ssbench.attack`` returns them).
    """
    scorer = Accuracy(target, y, batch_size) if isinstance(target, nn.Module) else target
    grid = sorted(set(float(e) for e in (attack.budget_grid if attack.budget_grid is not None else eps_grid)))
    curve = SweepCurve(attack=attack.name, mode=mode, n=len(x), norm=attack.norm, metric=scorer.metric, binary=scorer.binary)
    everyone = torch.arange(len(x), device=x.device)
    with eval_guard(scorer.model):
        clean = scorer.score(x, everyone)[scorer.metric]
        curve.clean = clean.cpu()
        if attack.minimum_norm:
            _min_norm_sweep(attack, scorer, x, y, grid, curve, batch_size, pool, on_eps, keep_adversarials)
            return curve
        survivors = scorer.binary and fast
        attackable = clean.bool() if scorer.binary else torch.ones(len(x), dtype=torch.bool, device=x.device)
        alive = attackable.clone()
        directions = _directions(attack, grad_model, x, y, attackable, batch_size) if fast else None
        for k, eps in enumerate(grid):
            t0 = time.perf_counter()
            still = standing[eps].to(x.device) if standing is not None else None
            if still is not None and survivors:
                alive &= still
            base = alive if survivors else (attackable if still is None else attackable & still)
            idx = base.nonzero().flatten()
            kept = x.clone() if keep_adversarials else None
            if eps == 0:  # all n examples, re-scored in another order / batching (sanity check f)
                adv = torch.cat([attack.perturb(grad_model, x[j], y[j], 0.0, reference=reference)
                                 for j in everyone.split(batch_size)]) if len(x) else x
                check_budget(attack, x, adv, 0.0)
                scores = scorer.score(adv, everyone, reorder=True)
                kept = adv if keep_adversarials else None
            else:
                scores = {}
                for b in range(0, len(idx), batch_size):
                    j = idx[b : b + batch_size]
                    if directions is not None:  # one gradient for the whole grid (FGSM)
                        adv = (x[j] + eps * directions[j]).clamp(0, 1)
                    else:
                        adv = attack.perturb(grad_model, x[j], y[j], eps, call=k * 100_003 + b, reference=reference)
                    check_budget(attack, x[j], adv, eps)
                    if kept is not None:
                        kept[j] = adv
                    for key, v in scorer.score(adv, j).items():  # examples not attacked score 0
                        scores.setdefault(key, torch.zeros(len(x), dtype=v.dtype, device=v.device))[j] = v
                if not scores:
                    scores = {scorer.metric: torch.zeros(len(x), dtype=clean.dtype, device=x.device)}
            if still is not None:
                scores[scorer.metric] = scores[scorer.metric] & still if scorer.binary else scores[scorer.metric] * still
            if survivors:
                alive &= scores[scorer.metric]
            if kept is not None:
                curve.adversarials.append(kept)
            _append(curve, scorer, eps, scores, time.perf_counter() - t0,
                    {**attack.params(eps), "sweep": "cumulative" if survivors else "per-eps", "monotone_assumption": survivors,
                     "attacked": len(idx)})
            if on_eps:
                on_eps(eps)
        return curve


def _append(curve: SweepCurve, scorer: Scorer, eps: float, scores: dict[str, Tensor], seconds: float,
            params: dict[str, Any]) -> None:
    curve.eps.append(eps)
    curve.scores.append(scores[scorer.metric].cpu())
    curve.extras.append({k: float(v.float().mean()) for k, v in scores.items() if k != scorer.metric})
    curve.seconds.append(seconds)
    curve.params.append(params)


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


def at_budget(x: Tensor, adv: Tensor, dist: Tensor, eps: float) -> Tensor:
    """Images a minimum-norm attack yields at budget eps: its adversarial where it needed <= eps,
    else the clean image."""
    ok = (dist <= eps + 1e-7).view((-1,) + (1,) * (x.dim() - 1))
    return torch.where(ok, adv, x)


def _min_norm_sweep(attack: Attack, scorer: Scorer, x: Tensor, y: Tensor, grid: list[float], curve: SweepCurve,
                    batch_size: int, pool: tuple[Tensor, Tensor] | None, on_eps: Callable[[float], None] | None,
                    keep: bool = False) -> None:
    """One minimum-norm run against the scorer's query model (a classifier; retrieval: its retrieval
    label) on the examples it labels correctly (the others need distance 0); each epsilon's images
    are the adversarials found within it, scored like any sweep."""
    query = scorer.query_model
    if query is None:
        raise SpecError(f"{attack.name}: {scorer.no_query_model}")
    t0 = time.perf_counter()
    pool_x, pool_y = pool if pool is not None else (x, y)
    idx = (predict(query, x, batch_size) == y).nonzero().flatten()
    dist = torch.zeros(len(x), device=x.device)
    dist[idx] = float("inf")
    adv = x.clone()
    for b in range(0, len(idx), batch_size):
        j = idx[b : b + batch_size]
        adv[j], dist[j] = attack.min_distance(query, x[j], y[j], pool_x=pool_x, pool_y=pool_y, call=b)
    total = time.perf_counter() - t0
    everyone = torch.arange(len(x), device=x.device)
    for eps in grid:
        found = dist <= eps + 1e-7
        if attack.norm == "linf" and eps > 0:
            check_budget(attack, x, at_budget(x, adv, dist, eps), eps)
        # eps 0 is re-scored in another order / batching like the budgeted attacks' (sanity check f)
        images = at_budget(x, adv, dist, eps)
        scores = scorer.score(images, everyone, reorder=eps == 0)
        if keep:
            curve.adversarials.append(images)
        if scorer.binary:  # an example the attack broke within eps counts as broken
            scores[scorer.metric] = scores[scorer.metric] & ~found
        _append(curve, scorer, eps, scores, total / len(grid),
                {**attack.params(eps), "sweep": "minimum-norm", "monotone_assumption": True, "seconds_total": total,
                 "attacked": len(idx), "found": float(found[idx].float().mean()) if len(idx) else 0.0})
        if on_eps:
            on_eps(eps)
