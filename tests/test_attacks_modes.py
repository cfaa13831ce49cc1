"""Gradient modes and sanity checks: the trap this tool exists to expose."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ssbench.attacks import ATTACKS, curve_checks, gradient_consistency, gradient_source, run_sweep
from ssbench.attacks.sanity import directional_agreement
from ssbench.attacks.sweep import SweepCurve
from ssbench.errors import SpecError
from test_attacks_common import Scaled, digits, mlp, trained

pytest.importorskip("ssbench.rules")


def batch(n: int = 100):
    _, _, x, y = digits()
    return x[:n], y[:n]


def pgd_curve(model, mode, x, y, grid=(0.0, 0.05, 0.1)):
    with gradient_source(mode, model) as g:
        return run_sweep(ATTACKS.get("pgd")(steps=20, seed=0), model, g, x, y, list(grid), mode=mode)


def test_fa_feedback_attack_is_obfuscated_and_flagged():
    x, y = batch(100)
    model = trained("fa")
    fb, ex = pgd_curve(model, "feedback", x, y), pgd_curve(model, "exact", x, y)
    assert fb.at(0.0) == ex.at(0.0) > 0.85  # same forward, same clean accuracy
    assert fb.at(0.1) > ex.at(0.1) + 0.3  # feedback pseudo-gradient: "robust"; honest gradient: not
    with gradient_source("feedback", model) as g:
        c_fb = gradient_consistency("feedback", g, model, x[:40], y[:40])
    with gradient_source("exact", model) as g:
        c_ex = gradient_consistency("exact", g, model, x[:40], y[:40])
    assert c_fb.passed is False and c_fb.value < 0.5
    assert c_ex.passed is True and c_ex.value > 0.99


def test_bp_modes_agree_and_are_consistent():
    x, y = batch(60)
    model = trained("bp")
    from ssbench.rules import convert

    model = convert(copy.deepcopy(model), "bp")
    fb, ex = pgd_curve(model, "feedback", x, y), pgd_curve(model, "exact", x, y)
    assert [fb.bitstring(k) for k in range(3)] == [ex.bitstring(k) for k in range(3)]
    for mode in ("feedback", "exact"):
        with gradient_source(mode, model) as g:
            assert gradient_consistency(mode, g, model, x[:30], y[:30]).value > 0.99


def test_exact_mode_gradient_is_plain_autograd_of_same_weights():
    """Independent: an unconverted MLP holding the FA model's weights, differentiated by autograd."""
    x, y = batch(20)
    model = trained("fa")
    plain = mlp()
    plain.load_state_dict(model.state_dict(), strict=False)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), plain.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with gradient_source("exact", model) as g:
        (ga,) = torch.autograd.grad(F.cross_entropy(g(xa), y), xa)
    (gb,) = torch.autograd.grad(F.cross_entropy(plain(xb), y), xb)
    assert torch.allclose(ga, gb, atol=1e-6)
    with gradient_source("feedback", model) as g:
        (gf,) = torch.autograd.grad(F.cross_entropy(g(xa), y), xa)
    assert F.cosine_similarity(gf.flatten(), gb.flatten(), dim=0) < 0.5


def _cotangent(model, x, y):
    """v = e_{j*} - e_y from the logits, j* the best wrong class, by a plain loop."""
    with torch.no_grad():
        z = model(x)
    v = torch.zeros_like(z)
    for i in range(len(y)):
        wrong = [j for j in range(z.shape[1]) if j != int(y[i])]
        v[i, max(wrong, key=lambda j: float(z[i, j]))] = 1.0
        v[i, y[i]] = -1.0
    return v


def test_consistency_estimator_matches_true_cosine_of_gradients():
    """The finite-difference estimator vs the true cosine between J^T v of the feedback backward
    and of plain autograd, v the margin cotangent: on k directions the estimator is noisy, but both
    must be low for FA and the estimator must be ~1 when fed the true gradient."""
    x, y = batch(30)
    model = trained("fa")
    v = _cotangent(model, x, y)
    with gradient_source("exact", model) as g:
        assert directional_agreement(g, model, x, y, k=16).min() > 0.99
    with gradient_source("feedback", model) as g:
        est = directional_agreement(g, model, x, y, k=64).mean()
        xa = x.clone().requires_grad_(True)
        (gf,) = torch.autograd.grad((g(xa) * v).sum(), xa)
    plain = mlp()
    plain.load_state_dict(model.state_dict(), strict=False)
    xb = x.clone().requires_grad_(True)
    (ge,) = torch.autograd.grad((plain(xb) * v).sum(), xb)
    true = F.cosine_similarity(gf.flatten(1).double(), ge.flatten(1).double(), dim=1).mean()
    assert float(true) < 0.5
    assert abs(float(est) - float(true)) < 0.25


def test_consistency_survives_saturated_cross_entropy():
    """Regression: logits x1000. Cross-entropy is exactly 0 in float64 on most examples (so a loss-
    based check saw gradient 0 and finite difference 0, cosine 0, and flagged the honest gradient
    as obfuscated). The margin cotangent measures the backward itself: exact passes, FA fails."""
    x, y = batch(40)
    model = Scaled(trained("fa"), 1000.0).eval()
    with torch.no_grad():
        ce64 = F.cross_entropy(copy.deepcopy(model).double()(x.double()), y, reduction="none")
    assert int((ce64 == 0).sum()) >= 20
    with gradient_source("exact", model) as g:
        c_ex = gradient_consistency("exact", g, model, x, y)
    with gradient_source("feedback", model) as g:
        c_fb = gradient_consistency("feedback", g, model, x, y)
    assert c_ex.passed is True and c_ex.value > 0.99
    assert c_fb.passed is False and c_fb.value < 0.5


def test_consistency_of_dfa_feedback_uses_the_output_cotangent():
    """DFA's hidden layers receive B_l e with e the output cotangent: feeding v must give J_DFA^T v,
    which the finite differences of the true forward do not follow; exact mode does."""
    x, y = batch(30)
    model = trained("dfa")
    with gradient_source("feedback", model) as g:
        c_fb = gradient_consistency("feedback", g, model, x, y)
    with gradient_source("exact", model) as g:
        c_ex = gradient_consistency("exact", g, model, x, y)
    assert c_ex.value > 0.99 and c_fb.passed is False


def test_transfer_mode_uses_the_surrogate_and_target_forward():
    x, y = batch(60)
    target, surrogate = trained("fa"), trained("bp")
    with gradient_source("transfer", target, surrogate) as g:
        assert g is surrogate
        curve = run_sweep(ATTACKS.get("fgsm")(), target, g, x, y, [0.0, 0.1], mode="transfer")
    with torch.no_grad():
        assert curve.at(0.0) == float((target(x).argmax(1) == y).float().mean())
    with pytest.raises(SpecError):
        with gradient_source("transfer", target):
            pass


def _curve(attack, mode, eps, robust, n=100, norm="linf"):
    c = SweepCurve(attack=attack, mode=mode, n=n, norm=norm)
    for e, r in zip(eps, robust):
        k = round(r * n)
        c.eps.append(e)
        c.correct.append(torch.arange(n) < k)
    return c


def test_curve_checks_flag_what_they_should():
    eps = [0.0, 0.1, 0.2]
    curves = [
        _curve("fgsm", "feedback", eps, [0.9, 0.5, 0.4]),
        _curve("pgd", "feedback", eps, [0.9, 0.8, 0.7]),  # iterative weaker than single-step: flag
        _curve("fgsm", "exact", eps, [0.9, 0.4, 0.2]),
        _curve("pgd", "exact", eps, [0.9, 0.2, 0.05]),
        _curve("square", "query", eps, [0.85, 0.3, 0.1]),  # eps0 != clean (0.9): flag
        _curve("apgd-dlr", "exact", eps, [0.9, 0.6, 0.3]),  # above fgsm's 0.4 at 0.1: flag
        _curve("tpgd", "exact", eps, [0.9, 0.35, 0.2]),
        _curve("tpgd", "feedback", eps, [0.9, 0.5, 0.6]),  # 0.6 vs 0.4 at 0.2: flag
    ]
    checks = curve_checks(curves, clean_accuracy=0.9, num_classes=10)
    get = lambda name, mode, attack=None: [c for c in checks if c.name == name and c.mode == mode and (attack is None or c.attack == attack)]
    assert get("iterative_le_single_step", "feedback", "pgd")[0].passed is False
    assert get("iterative_le_single_step", "exact", "pgd")[0].passed is True
    assert get("iterative_le_single_step", "exact", "apgd-dlr")[0].passed is False
    assert get("iterative_le_single_step", "exact", "tpgd")[0].passed is True
    assert get("iterative_le_single_step", "feedback", "tpgd")[0].passed is False
    assert get("whitebox_le_blackbox", "feedback")[0].passed is False  # best white-box 0.5 > square 0.3
    assert get("whitebox_le_blackbox", "exact")[0].passed is True
    assert all(c.passed is None and "0.2" in c.detail for c in checks if c.name == "falls_to_chance")
    assert get("eps0_equals_clean", "query")[0].passed is False
    assert get("eps0_equals_clean", "exact", "pgd")[0].passed is True
    wide = curve_checks([_curve("pgd", "exact", [0, 0.5], [0.9, 0.3])], 0.9, 10)
    assert [c.passed for c in wide if c.name == "falls_to_chance"] == [False]
    # tolerance: 1 binomial std + 1/n; 0.12 vs chance 0.1 with n=100 is within 0.03 + 0.01
    ok = curve_checks([_curve("pgd", "exact", [0, 0.5], [0.9, 0.12])], 0.9, 10)
    assert [c.passed for c in ok if c.name == "falls_to_chance"] == [True]


def test_eps0_check_is_per_example_when_clean_predictions_are_given():
    """Two examples swapped (one clean-correct now wrong, one clean-wrong now right): same count,
    so the count comparison passes, but the per-example comparison flags it."""
    clean = torch.arange(100) < 90
    swapped = clean.clone()
    swapped[0], swapped[95] = False, True
    c = SweepCurve(attack="pgd", mode="exact", n=100, eps=[0.0], scores=[swapped])
    by_count = curve_checks([c], 0.9, 10)
    per_example = curve_checks([c], 0.9, 10, clean_correct=clean)
    assert [k.passed for k in by_count if k.name == "eps0_equals_clean"] == [True]
    assert [k.passed for k in per_example if k.name == "eps0_equals_clean"] == [False]
    assert "2 example" in [k.detail for k in per_example if k.name == "eps0_equals_clean"][0]


def test_whitebox_le_transfer_check():
    eps = [0.0, 0.1]
    checks = curve_checks(
        [_curve("pgd", "feedback", eps, [0.9, 0.8]), _curve("pgd", "exact", eps, [0.9, 0.1]),
         _curve("pgd", "transfer", eps, [0.9, 0.4])], 0.9, 10)
    res = {c.mode: c.passed for c in checks if c.name == "whitebox_le_transfer"}
    assert res == {"feedback": False, "exact": True}
