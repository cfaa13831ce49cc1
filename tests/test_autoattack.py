"""The AutoAttack suite (each attack on the survivors of the ones before) and the flags in the spirit
of AutoAttack's own checks and Carlini et al. 2019 (doubled iterations, zero gradients)."""
from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from ssbench.attacks import ATTACKS
from ssbench.attacks.sanity import doubled_steps, zero_gradients
from ssbench.attacks.sweep import run_sweep
from ssbench.specs import AttackSpec
from test_attacks_common import digits, trained
from test_attacks_job import FakeStore, fake_env

EPS = (0.0, 0.05, 0.1)
N = 64


def _robust(sweep) -> dict[float, float]:  # noqa: ANN001
    return {p.epsilon: p.robust for p in sweep}


def _run(monkeypatch, **kw) -> FakeStore:  # noqa: ANN001, ANN003
    from ssbench.attacks.job import run_attack

    fake_env(monkeypatch)
    store = FakeStore()
    run_attack(AttackSpec(target="5", eps=EPS, n_examples=N, device="cpu", **kw), store,
               console=Console(file=io.StringIO()), quiet=True)
    return store


def test_ensemble_worst_case_is_below_every_component_and_pgd(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an FA-trained MLP: the ensemble's result (its last, cumulative curve) is <= each member run
    alone on all examples and <= PGD-40 exact, at every eps; each member only attacked survivors."""
    ens = _run(monkeypatch, suite="autoattack")
    sweeps = ens.rec.sweeps
    assert [(s[0].attack, s[0].mode) for s in sweeps] == [
        ("apgd-ce", "exact"), ("apgd-t", "exact"), ("fab-t", "exact"), ("square", "query")]
    # cumulative: an example robust after a member was robust after every earlier one
    for before, after in zip(sweeps, sweeps[1:]):
        for p, q in zip(before, after):
            assert all(b == "1" or a == "0" for b, a in zip(p.correct, q.correct))
            assert q.params["attacked"] <= p.correct.count("1")  # only survivors were attacked
    assert sweeps[-1][0].params["chain"] == ["apgd-ce/exact", "apgd-t/exact", "fab-t/exact"]
    assert all(p.params["ensemble"] == "autoattack" for s in sweeps for p in s)
    final = _robust(sweeps[-1])
    assert {float(k): v for k, v in ens.rec.summary["worst_case"].items()} == pytest.approx(final)

    alone = {}
    for name, suite in (("apgd-ce", "whitebox"), ("apgd-t", "whitebox"), ("fab-t", "whitebox"),
                        ("square", "blackbox"), ("pgd", "whitebox")):
        rec = _run(monkeypatch, suite=suite, attacks=(name,), modes=("exact",), steps=40 if name == "pgd" else None).rec
        alone[name] = _robust(rec.sweeps[0])
    for eps in EPS:
        for name, curve in alone.items():
            assert final[eps] <= curve[eps] + 1e-12, (name, eps)
    assert final[0.1] < alone["pgd"][0.1] or final[0.1] == 0.0  # the ensemble adds something at 0.1


def test_ensemble_defaults_to_exact_mode_and_skips_apgd_t_below_four_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AttackSpec(target="1", suite="autoattack").modes == ("exact",)
    assert AttackSpec(target="1").modes == ("feedback", "exact")
    assert AttackSpec(target="1", suite="hashing").eps == "hashing"
    from ssbench.attacks.job import defined_for
    from ssbench.errors import SpecError

    kept, skipped = defined_for(["apgd-ce", "apgd-t", "fab-t", "square"], 3, optional=True)
    assert kept == ["apgd-ce", "fab-t", "square"] and "at least 4 classes" in skipped["apgd-t"]
    with pytest.raises(SpecError, match="apgd-t needs at least 4 classes"):
        defined_for(["apgd-t"], 3, optional=False)


def test_run_sweep_with_standing_attacks_only_survivors() -> None:
    """run_sweep(standing=...): examples broken earlier stay broken and are never attacked again."""
    model = trained("bp")
    _, _, xte, yte = digits()
    x, y = xte[:N], yte[:N]
    atk = ATTACKS.get("pgd")(steps=10, seed=0)
    free = run_sweep(atk, model, model, x, y, EPS, mode="exact")
    standing = {e: torch.zeros(N, dtype=torch.bool) for e in EPS}  # everything already broken
    standing[0.0] = free.correct[0].clone()
    chained = run_sweep(atk, model, model, x, y, EPS, mode="exact", standing=standing)
    assert chained.robust()[1:] == [0.0, 0.0]
    assert [p["attacked"] for p in chained.params[1:]] == [0, 0]
    standing = {e: free.correct[0].clone() for e in EPS}  # nothing broken yet: same curve as alone
    assert run_sweep(atk, model, model, x, y, EPS, mode="exact", standing=standing).robust() == free.robust()


def test_doubled_steps_fires_on_an_unconverged_attack_and_not_on_pgd40_against_bp() -> None:
    model = trained("bp")
    _, _, xte, yte = digits()
    x, y = xte[:200], yte[:200]
    clean = model(x).argmax(1) == y

    pgd = ATTACKS.get("pgd")

    class Creeping(pgd):  # type: ignore[misc, valid-type]
        """PGD whose steps are too short to cross the ball: constructed to be far from converged."""

        def step_size(self, eps: float) -> float:
            return eps / 50

    def check(cls, steps: int):  # noqa: ANN001, ANN202
        atk = cls(steps=steps, seed=0)
        curve = run_sweep(atk, model, model, x, y, (0.0, 0.05, 0.1, 0.2), mode="exact")
        return doubled_steps(atk, curve, model, model, x, y, clean)

    creeping = check(Creeping, 5)  # walks 0.1 eps in 5 steps, 0.2 eps in 10
    assert creeping.passed is False and creeping.value > 0 and "not converged" in creeping.detail
    forty = check(pgd, 40)
    assert forty.passed is True, forty.detail


def test_zero_gradients_fires_on_a_saturated_model_and_not_on_bp() -> None:
    model = trained("bp")
    _, _, xte, yte = digits()
    x, y = xte[:200], yte[:200]
    keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    ok = zero_gradients("exact", model, x, y)
    assert ok.passed is True and ok.value == 0.0
    saturated = torch.nn.Sequential(model, torch.nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        saturated[1].weight.copy_(torch.eye(10) * 1e4)  # same predictions, logits 10^4 apart: CE gradient 0
    g = zero_gradients("exact", saturated, x, y)
    assert g.passed is False and g.value > 0.5 and "margin" in g.detail
    # the share is computed independently: all-zero input gradients of the summed CE, one per example
    xg = x[:64].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(saturated(xg), y[:64], reduction="sum").backward()
    assert g.value == pytest.approx(float((xg.grad.flatten(1).abs().amax(1) == 0).float().mean()))
