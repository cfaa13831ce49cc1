"""Sanity checks run on every attack job, classification and hashing alike. A robustness claim that
fails one is flagged, not hidden.

Tolerance of comparisons between two robust numbers: one binomial standard deviation of n,
sqrt(p (1 - p) / n) at the larger of the two values, plus one example (1 / n). For a graded score
in [0, 1] (AP per query) the binomial variance bounds the variance of the mean, so it stays a
conservative tolerance.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.attacks.base import Attack, eval_guard
from ssbench.attacks.losses import margin_cotangent
from ssbench.attacks.scoring import Accuracy, Scorer
from ssbench.attacks.sweep import SweepCurve
from ssbench.store.records import SanityCheck  # the record itself: checks are stored as made

CONSISTENCY_THRESHOLD = 0.9
WIDE_EPS = 0.3  # chance-level check is only meaningful with a grid reaching this far ([0, 1] data)


def tolerance(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)) + 1.0 / max(n, 1)


# -- (a) gradient consistency -------------------------------------------------------------------

def directional_agreement(
    grad_model: nn.Module, target: nn.Module, x: Tensor, y: Tensor, *, k: int = 32, h: float = 1e-4, seed: int = 0,
    cotangent: Callable[[Tensor, Tensor], Tensor] = margin_cotangent,
) -> Tensor:
    """Per example: cosine between (g . u_j)_j and the central differences
    ((m(x + h u_j) - m(x - h u_j)) / 2h)_j over k random unit directions u_j, where m(x) = v . f(x)
    is the target's logits f along a fixed cotangent v (``margin_cotangent`` at the clean input) and
    g = J^T v is what ``grad_model``'s backward returns for that cotangent.

    It measures the backward itself, not a loss: cross-entropy saturates on over-confident models
    (logits ~100: CE and its gradient are exactly 0 even in float64), which made an exact gradient
    look "obfuscated". Feeding v as the output cotangent also keeps DFA honest: its hidden layers
    receive B_l v, the error it captures at the output. ``cotangent``: the scorer's choice of v (a
    hashing target: its clean code).
    """
    x = x.detach()
    f64 = copy.deepcopy(target).double().eval()
    with torch.no_grad():
        v = cotangent(f64(x.double()), y)
    # float64 copies: finite differences of float32 logits are rounding noise at h = 1e-4. A
    # deepcopy keeps the rule state and the exact/feedback switch.
    try:
        g_model = copy.deepcopy(grad_model).double().eval()
        xg = x.double().requires_grad_(True)
        (g,) = torch.autograd.grad((g_model(xg) * v).sum(), xg)
    except (RuntimeError, TypeError):  # a backward that only supports float32
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((grad_model(xg) * v.float()).sum(), xg)
    g = g.double().flatten(1)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, d = g.shape
    u = torch.randn(k, n, d, generator=gen, dtype=torch.float64).to(x.device)
    u = u / u.norm(dim=2, keepdim=True)
    x64 = x.double().flatten(1)
    fd = torch.empty(k, n, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for j in range(k):
            mp = (f64((x64 + h * u[j]).view_as(x)) * v).sum(1)
            mm = (f64((x64 - h * u[j]).view_as(x)) * v).sum(1)
            fd[j] = (mp - mm) / (2 * h)
    dots = (u * g.unsqueeze(0)).sum(2)  # k x n
    return F.cosine_similarity(dots.T, fd.T, dim=1, eps=1e-300)


def gradient_consistency(mode: str, grad_model: nn.Module, target: nn.Module, x: Tensor, y: Tensor,
                         *, k: int = 32, seed: int = 0, cotangent: Callable[[Tensor, Tensor], Tensor] = margin_cotangent) -> SanityCheck:
    cos = directional_agreement(grad_model, target, x, y, k=k, seed=seed, cotangent=cotangent)
    value = float(cos.mean())
    along = "logit margin" if cotangent is margin_cotangent else "outputs along a fixed direction"
    detail = (f"mean over {len(x)} examples of cos(g.u, finite difference of the target's {along}) "
              f"on {k} random directions; "
              f"min {float(cos.min()):.3f}; threshold {CONSISTENCY_THRESHOLD}")
    if mode == "transfer":
        return SanityCheck("gradient_consistency", None, value, "informational (surrogate gradient): " + detail, mode=mode)
    passed = value >= CONSISTENCY_THRESHOLD
    if not passed:
        detail = "the attacker's gradient is NOT the gradient of the target's loss (obfuscated); " + detail
    return SanityCheck("gradient_consistency", passed, value, detail, mode=mode)


# -- (b)-(f) curve comparisons ------------------------------------------------------------------

def _linf(curves: Sequence[SweepCurve]) -> list[SweepCurve]:
    return [c for c in curves if c.norm == "linf"]


def _compare(name: str, weaker: SweepCurve, stronger_claim: SweepCurve, what: str, **who: str | None) -> SanityCheck | None:
    """Check robust(weaker) <= robust(stronger_claim) + tol at every shared eps."""
    worst, where, tol_at = -1.0, None, 0.0
    for e in weaker.eps:
        a, b = weaker.at(e), stronger_claim.at(e)
        if a is None or b is None or e == 0:
            continue
        tol = tolerance(max(a, b), weaker.n)
        if a - b - tol > worst:
            worst, where, tol_at = a - b - tol, (e, a, b), tol
    if where is None:
        return None
    e, a, b = where
    ok = worst <= 0
    detail = f"{what}; worst at eps={e:g}: {a:.3f} vs {b:.3f} (tolerance {tol_at:.3f} = 1 binomial std + 1/n)"
    return SanityCheck(name, ok, a - b, detail, **who)


def curve_checks(curves: Sequence[SweepCurve], clean_accuracy: float, num_classes: int,
                 clean_correct: Tensor | None = None, *, chance: float | None = None) -> list[SanityCheck]:
    """Checks (b)-(f). ``clean_correct``: the clean per-example scores (check f per example);
    ``chance``: the score of a guess (default 1 / num_classes)."""
    checks: list[SanityCheck] = []
    by = {(c.attack, c.mode): c for c in curves}
    modes = sorted({c.mode for c in curves if c.mode not in ("query",)})

    # (b) iterative <= single-step, same mode: each attack names the single-step one it must beat
    # (TPGD ascends KL to the clean prediction, not the label loss, but starting at the clean point
    # and taking many steps it must still beat one FGSM step)
    for (name, m), c in by.items():
        single = _compared_with(name)
        if single is not None and (single, m) in by:
            r = _compare("iterative_le_single_step", c, by[(single, m)],
                         f"{name} robust {c.metric} must not exceed {single}'s", attack=name, mode=m)
            if r:
                checks.append(r)

    # (c) white-box <= black-box: the best white-box attack per mode vs the best black-box attack
    black = [c for c in _linf(curves) if c.mode == "query"]
    for m in modes:
        white = [c for c in _linf(curves) if c.mode == m]
        if not white or not black:
            continue
        bw, bb = _best(white, m), _best(black, "query")
        c = _compare("whitebox_le_blackbox", bw, bb,
                     f"best white-box ({m}) must not exceed best black-box", attack=bw.attack, mode=m)
        if c:
            checks.append(c)

    # (d) white-box <= transfer, same attack
    for m in modes:
        if m == "transfer":
            continue
        for c in _linf(curves):
            if c.mode == m and (c.attack, "transfer") in by:
                r = _compare("whitebox_le_transfer", c, by[(c.attack, "transfer")],
                             f"{c.attack} white-box ({m}) must not exceed its transfer attack", attack=c.attack, mode=m)
                if r:
                    checks.append(r)

    # (d') exact <= feedback, same attack: the true gradient must not be weaker than the rule's
    # pseudo-gradient (if it is, the exact attack is broken, e.g. saturated, not the model robust)
    for c in _linf(curves):
        if c.mode == "exact" and (c.attack, "feedback") in by:
            r = _compare("exact_le_feedback", c, by[(c.attack, "feedback")],
                         f"{c.attack} with the exact gradient must not exceed it with the feedback gradient",
                         attack=c.attack, mode="exact")
            if r:
                checks.append(r)

    # (e) accuracy at the largest eps falls to chance or below
    chance = 1.0 / num_classes if chance is None else chance
    for c in _linf(curves):
        emax = max(c.eps)
        r = c.at(emax)
        if emax < WIDE_EPS:
            checks.append(SanityCheck("falls_to_chance", None, r,
                                f"not meaningful: largest eps {emax:g} < {WIDE_EPS} (use --eps wide)", c.attack, c.mode))
        else:
            tol = tolerance(chance, c.n)
            ok = r <= chance + tol
            checks.append(SanityCheck("falls_to_chance", ok, r,
                                f"robust {c.metric} at eps={emax:g} vs chance {chance:.3f} (tolerance {tol:.3f})"
                                + ("" if ok else "; an unbounded attack must reach chance: attack too weak or gradient obfuscated"),
                                c.attack, c.mode))

    # (f) eps = 0 equals clean: the sweep re-predicts every example at eps 0 in another order and
    # batching than the clean prediction (scoring.repredict), so a forward that depends on batch
    # composition or draws randomness (BatchNorm batch statistics or dropout left active, a module
    # ignoring eval()), an attack that altered the target, or an eps-0 path that moved the image
    # shows up here. Per example when the clean predictions are given, else by counts.
    for c in curves:
        r0 = c.at(0.0)
        if r0 is None:
            continue
        if clean_correct is not None and len(clean_correct) == c.n:
            k0 = next(i for i, e in enumerate(c.eps) if abs(e) < 1e-9)
            flips = int(((c.scores[k0].cpu().double() - clean_correct.cpu().double()).abs() > 1e-9).sum())
        else:
            flips = round(abs(r0 - clean_accuracy) * c.n)  # counts of examples, not float means
        checks.append(SanityCheck("eps0_equals_clean", flips == 0, r0,
                            f"{c.metric} at eps=0 {r0:.4f} vs clean {clean_accuracy:.4f}; {flips} example(s) "
                            "differ (tolerance 0)" + ("" if flips == 0 else
                            "; the target's predictions depend on batching / randomness or the attack changed it"),
                            c.attack, c.mode))
    return checks


def _best(curves: Sequence[SweepCurve], mode: str) -> SweepCurve:
    """Per-example worst case over several curves (an example survives only if it survives all)."""
    if len(curves) == 1:
        return curves[0]
    eps = sorted(set.intersection(*(set(c.eps) for c in curves)))
    if not curves[0].binary:  # a graded score has no per-example "survives all": the lowest curve
        return min(curves, key=lambda c: sum(c.robust()))
    out = SweepCurve(attack="+".join(c.attack for c in curves), mode=mode, n=curves[0].n)
    for e in eps:
        corr = None
        for c in curves:
            k = [i for i, ce in enumerate(c.eps) if abs(ce - e) < 1e-9][0]
            corr = c.correct[k] if corr is None else corr & c.correct[k]
        out.eps.append(e)
        out.scores.append(corr)
    return out


# -- (g) doubled iterations, (h) zero gradients ----------------------------------------------------
# Carlini et al. 2019 ("On evaluating adversarial robustness"): an attack that has converged gains
# nothing from more iterations, and a model whose input gradients vanish defeats gradient attacks
# without being robust. Both are checked on a subsample of clean-correct examples.

CHECK_EXAMPLES = 64  # the subsample of clean-correct examples every per-mode check runs on
ZERO_GRADIENT_SHARE = 0.1  # more than this share of examples with an all-zero input gradient


def doubled_steps(attack: Attack, curve: SweepCurve, target: nn.Module | Scorer, grad_model: nn.Module, x: Tensor, y: Tensor,
                  clean_correct: Tensor, *, reference: object = None) -> SanityCheck | None:
    """Robust accuracy with 2x the attack's iterations vs 1x, at the budget where the curve is nearest
    half the clean accuracy, on the first CHECK_EXAMPLES clean-correct examples (both runs fresh on
    the same examples, so the sweep's cumulative bookkeeping does not enter). Flagged when doubling
    lowers it by more than the tolerance: the reported curve is not converged. ``target``: a classifier
    or a scorer; ``clean_correct``: its clean per-example scores (graded: examples scoring above 0)."""
    scorer = Accuracy(target, y) if isinstance(target, nn.Module) else target
    budgets = [(e, r) for e, r in zip(curve.eps, curve.robust()) if e > 0]
    if attack.steps is None or not budgets:
        return None
    idx = (clean_correct > 0).nonzero().flatten()[:CHECK_EXAMPLES]
    if len(idx) == 0:
        return None
    half = float(clean_correct.float().mean()) / 2
    eps = min(budgets, key=lambda er: abs(er[1] - half))[0]
    twice = type(attack)(steps=2 * attack.steps, seed=attack.seed,
                         **({"loss": attack.loss} if attack.loss_choices else {}), **attack.options)
    xs, ys = x[idx], y[idx]
    robust = []
    for atk in (attack, twice):
        adv = atk.perturb(grad_model, xs, ys, eps, call=7, reference=reference)
        robust.append(float(scorer.score(adv, idx)[scorer.metric].float().mean()))
    once, double = robust
    tol = tolerance(max(once, double), len(idx))
    ok = once - double <= tol
    return SanityCheck("doubled_steps", ok, once - double,
                 f"eps={eps:g}, {len(idx)} examples correct when clean: {attack.steps} steps {once:.3f} vs "
                 f"{2 * attack.steps} steps {double:.3f} (tolerance {tol:.3f})"
                 + ("" if ok else "; the attack has not converged: its curve overstates robustness"),
                 attack.name, curve.mode)


def zero_gradients(mode: str, grad_model: nn.Module, x: Tensor, y: Tensor,
                   loss: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None) -> SanityCheck:
    """Share of examples whose input gradient of the attack loss (default: cross-entropy; a scorer's
    ``attack_loss``), through the attacker's module, is exactly zero (saturated softmax, a rule
    backward that sends nothing): a gradient attack cannot move them, which reads as robustness.
    ``x, y``: clean-correct examples."""
    x, y = x[:CHECK_EXAMPLES], y[:CHECK_EXAMPLES]
    if len(x) == 0:
        return SanityCheck("zero_gradients", None, None, "no clean-correct examples", mode=mode)
    with eval_guard(grad_model):
        xg = x.detach().clone().requires_grad_(True)
        per = loss(grad_model, xg, y) if loss is not None else F.cross_entropy(grad_model(xg), y, reduction="none")
        (g,) = torch.autograd.grad(per.sum(), xg)
    share = float((g.flatten(1).abs().amax(1) == 0).float().mean())
    ok = share <= ZERO_GRADIENT_SHARE
    return SanityCheck("zero_gradients", ok, share,
                 f"{share:.0%} of {len(x)} clean-correct examples have an all-zero input gradient of the "
                 f"{'CE' if loss is None else 'attack'} loss "
                 f"(flagged above {ZERO_GRADIENT_SHARE:.0%})"
                 + ("" if ok else "; gradient attacks cannot move them: use --loss margin, apgd-dlr or black-box attacks"),
                 mode=mode)


def _compared_with(name: str) -> str | None:
    from ssbench.attacks.base import ATTACKS

    return ATTACKS.get(name).compared_with if name in ATTACKS else None
