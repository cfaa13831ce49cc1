"""Sanity checks run on every attack job. A robustness claim that fails one is flagged, not hidden.

Tolerance of comparisons between two robust accuracies: one binomial standard deviation of n,
sqrt(p (1 - p) / n) at the larger of the two values, plus one example (1 / n).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.attacks.base import Attack, eval_guard
from ssbench.attacks.losses import runner_up
from ssbench.attacks.starting import predict
from ssbench.attacks.sweep import SweepCurve

CONSISTENCY_THRESHOLD = 0.9
ITERATIVE = ("pgd", "apgd-ce", "apgd-dlr", "tpgd")  # compared with fgsm by check (b)
WIDE_EPS = 0.3  # chance-level check is only meaningful with a grid reaching this far ([0, 1] data)


@dataclass
class Check:
    name: str
    passed: bool | None
    value: float | None = None
    detail: str = ""
    attack: str | None = None
    mode: str | None = None

    def to_record(self):  # noqa: ANN201
        from ssbench.store.records import SanityCheck

        return SanityCheck(name=self.name, passed=self.passed, value=self.value, detail=self.detail,
                           attack=self.attack, mode=self.mode)


def tolerance(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)) + 1.0 / max(n, 1)


# -- (a) gradient consistency -------------------------------------------------------------------

def margin_cotangent(logits: Tensor, y: Tensor) -> Tensor:
    """v = e_{j*} - e_y per example, j* = argmax_{j != y} z_j: the direction CE's logit gradient
    softmax(z) - e_y takes (normalised) as the model grows confident, without its saturation."""
    c = logits.shape[1]
    return (F.one_hot(runner_up(logits, y), c) - F.one_hot(y, c)).to(logits.dtype)


def directional_agreement(
    grad_model: nn.Module, target: nn.Module, x: Tensor, y: Tensor, *, k: int = 32, h: float = 1e-4, seed: int = 0
) -> Tensor:
    """Per example: cosine between (g . u_j)_j and the central differences
    ((m(x + h u_j) - m(x - h u_j)) / 2h)_j over k random unit directions u_j, where m(x) = v . f(x)
    is the target's logits f along a fixed cotangent v (``margin_cotangent`` at the clean input) and
    g = J^T v is what ``grad_model``'s backward returns for that cotangent.

    It measures the backward itself, not a loss: cross-entropy saturates on over-confident models
    (logits ~100: CE and its gradient are exactly 0 even in float64), which made an exact gradient
    look "obfuscated". Feeding v as the output cotangent also keeps DFA honest: its hidden layers
    receive B_l v, the error it captures at the output.
    """
    x = x.detach()
    f64 = copy.deepcopy(target).double().eval()
    with torch.no_grad():
        v = margin_cotangent(f64(x.double()), y)
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
                         *, k: int = 32, seed: int = 0) -> Check:
    cos = directional_agreement(grad_model, target, x, y, k=k, seed=seed)
    value = float(cos.mean())
    detail = (f"mean over {len(x)} examples of cos(g.u, finite difference of the target's logit margin) "
              f"on {k} random directions; "
              f"min {float(cos.min()):.3f}; threshold {CONSISTENCY_THRESHOLD}")
    if mode == "transfer":
        return Check("gradient_consistency", None, value, "informational (surrogate gradient): " + detail, mode=mode)
    passed = value >= CONSISTENCY_THRESHOLD
    if not passed:
        detail = "the attacker's gradient is NOT the gradient of the target's loss (obfuscated); " + detail
    return Check("gradient_consistency", passed, value, detail, mode=mode)


# -- (b)-(f) curve comparisons ------------------------------------------------------------------

def _linf(curves: Sequence[SweepCurve]) -> list[SweepCurve]:
    return [c for c in curves if c.norm == "linf"]


def _compare(name: str, weaker: SweepCurve, stronger_claim: SweepCurve, what: str, **who: str | None) -> Check | None:
    """Check robust(weaker) <= robust(stronger_claim) + tol at every shared eps."""
    worst, where, tol_at = -1.0, None, 0.0
    for e, _ in zip(weaker.eps, weaker.correct):
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
    return Check(name, ok, a - b, detail, **who)


def curve_checks(curves: Sequence[SweepCurve], clean_accuracy: float, num_classes: int,
                 clean_correct: Tensor | None = None) -> list[Check]:
    """Checks (b)-(f). ``clean_correct``: the clean per-example correctness (check f per example)."""
    checks: list[Check] = []
    by = {(c.attack, c.mode): c for c in curves}
    modes = sorted({c.mode for c in curves if c.mode not in ("query",)})

    # (b) iterative <= single-step, same mode (TPGD ascends KL to the clean prediction, not the label
    # loss, but starting at the clean point and taking many steps it must still beat one FGSM step)
    for m in modes:
        if ("fgsm", m) not in by:
            continue
        for it in ITERATIVE:
            if (it, m) in by:
                c = _compare("iterative_le_single_step", by[(it, m)], by[("fgsm", m)],
                             f"{it} robust accuracy must not exceed fgsm's", attack=it, mode=m)
                if c:
                    checks.append(c)

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

    # (e) accuracy at the largest eps falls to chance or below
    chance = 1.0 / num_classes
    for c in _linf(curves):
        emax = max(c.eps)
        r = c.at(emax)
        if emax < WIDE_EPS:
            checks.append(Check("falls_to_chance", None, r,
                                f"not meaningful: largest eps {emax:g} < {WIDE_EPS} (use --eps wide)", c.attack, c.mode))
        else:
            tol = tolerance(chance, c.n)
            ok = r <= chance + tol
            checks.append(Check("falls_to_chance", ok, r,
                                f"robust accuracy at eps={emax:g} vs chance {chance:.3f} (tolerance {tol:.3f})"
                                + ("" if ok else "; an unbounded attack must reach chance: attack too weak or gradient obfuscated"),
                                c.attack, c.mode))

    # (f) eps = 0 equals clean: the sweep re-predicts every example at eps 0 in another order and
    # batching than the clean prediction (sweep.repredict), so a forward that depends on batch
    # composition or draws randomness (BatchNorm batch statistics or dropout left active, a module
    # ignoring eval()), an attack that altered the target, or an eps-0 path that moved the image
    # shows up here. Per example when the clean predictions are given, else by counts.
    for c in curves:
        r0 = c.at(0.0)
        if r0 is None:
            continue
        if clean_correct is not None and len(clean_correct) == c.n:
            k0 = next(i for i, e in enumerate(c.eps) if abs(e) < 1e-9)
            flips = int((c.correct[k0].cpu() != clean_correct.cpu()).sum())
        else:
            flips = round(abs(r0 - clean_accuracy) * c.n)  # counts of examples, not float means
        checks.append(Check("eps0_equals_clean", flips == 0, r0,
                            f"robust at eps=0 {r0:.4f} vs clean {clean_accuracy:.4f}; {flips} example(s) "
                            "differ (tolerance 0)" + ("" if flips == 0 else
                            "; the target's predictions depend on batching / randomness or the attack changed it"),
                            c.attack, c.mode))
    return checks


def _best(curves: Sequence[SweepCurve], mode: str) -> SweepCurve:
    """Per-example worst case over several curves (an example survives only if it survives all)."""
    if len(curves) == 1:
        return curves[0]
    eps = sorted(set.intersection(*(set(c.eps) for c in curves)))
    out = SweepCurve(attack="+".join(c.attack for c in curves), mode=mode, n=curves[0].n)
    for e in eps:
        corr = None
        for c in curves:
            k = [i for i, ce in enumerate(c.eps) if abs(ce - e) < 1e-9][0]
            corr = c.correct[k] if corr is None else corr & c.correct[k]
        out.eps.append(e)
        out.correct.append(corr)
    return out


# -- (g) doubled iterations, (h) zero gradients ----------------------------------------------------
# Carlini et al. 2019 ("On evaluating adversarial robustness"): an attack that has converged gains
# nothing from more iterations, and a model whose input gradients vanish defeats gradient attacks
# without being robust. Both are checked on a subsample of clean-correct examples.

CHECK_EXAMPLES = 64  # the subsample of clean-correct examples every per-mode check runs on
ZERO_GRADIENT_SHARE = 0.1  # more than this share of examples with an all-zero input gradient


def doubled_steps(attack: Attack, curve: SweepCurve, target: nn.Module, grad_model: nn.Module, x: Tensor, y: Tensor,
                  clean_correct: Tensor) -> Check | None:
    """Robust accuracy with 2x the attack's iterations vs 1x, at the budget where the curve is nearest
    half the clean accuracy, on the first CHECK_EXAMPLES clean-correct examples (both runs fresh on
    the same examples, so the sweep's cumulative bookkeeping does not enter). Flagged when doubling
    lowers it by more than the tolerance: the reported curve is not converged."""
    budgets = [(e, r) for e, r in zip(curve.eps, curve.robust()) if e > 0]
    if attack.steps is None or not budgets:
        return None
    idx = clean_correct.nonzero().flatten()[:CHECK_EXAMPLES]
    if len(idx) == 0:
        return None
    half = float(clean_correct.float().mean()) / 2
    eps = min(budgets, key=lambda er: abs(er[1] - half))[0]
    twice = type(attack)(steps=2 * attack.steps, seed=attack.seed,
                         **({"loss": attack.loss} if attack.loss_choices else {}), **attack.options)
    xs, ys = x[idx], y[idx]
    robust = []
    for atk in (attack, twice):
        adv = atk.perturb(grad_model, xs, ys, eps, call=7)
        robust.append(float((predict(target, adv) == ys).float().mean()))
    once, double = robust
    tol = tolerance(max(once, double), len(idx))
    ok = once - double <= tol
    return Check("doubled_steps", ok, once - double,
                 f"eps={eps:g}, {len(idx)} clean-correct examples: {attack.steps} steps {once:.3f} vs "
                 f"{2 * attack.steps} steps {double:.3f} (tolerance {tol:.3f})"
                 + ("" if ok else "; the attack has not converged: its curve overstates robustness"),
                 attack.name, curve.mode)


def zero_gradients(mode: str, grad_model: nn.Module, x: Tensor, y: Tensor) -> Check:
    """Share of examples whose input gradient of the cross-entropy, through the attacker's module, is
    exactly zero (saturated softmax, a rule backward that sends nothing): a gradient attack cannot
    move them, which reads as robustness. ``x, y``: clean-correct examples."""
    x, y = x[:CHECK_EXAMPLES], y[:CHECK_EXAMPLES]
    if len(x) == 0:
        return Check("zero_gradients", None, None, "no clean-correct examples", mode=mode)
    with eval_guard(grad_model):
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(grad_model(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    share = float((g.flatten(1).abs().amax(1) == 0).float().mean())
    ok = share <= ZERO_GRADIENT_SHARE
    return Check("zero_gradients", ok, share,
                 f"{share:.0%} of {len(x)} clean-correct examples have an all-zero input gradient of the CE loss "
                 f"(flagged above {ZERO_GRADIENT_SHARE:.0%})"
                 + ("" if ok else "; gradient attacks cannot move them: use --loss margin, apgd-dlr or black-box attacks"),
                 mode=mode)
