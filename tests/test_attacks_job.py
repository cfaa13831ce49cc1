"""The attack job end to end against an in-memory fake store (orchestration, persistence, checks)."""
from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from ssbench.attacks import select_indices
from ssbench.specs import AttackSpec, DataSpec, ModelSpec, RuleSpec, TrainSpec
from test_attacks_common import digits, trained

pytest.importorskip("ssbench.store.records")
pytest.importorskip("ssbench.rules")


class FakeRecorder:
    run_id = 7

    def __init__(self) -> None:
        self.sweeps, self.sanity, self.summary, self.evals = [], [], {}, []

    def add_sweep(self, points):
        self.sweeps.append(list(points))

    def add_sanity(self, checks):
        self.sanity.extend(checks)

    def set_summary(self, **kv):
        self.summary.update(kv)

    def log_evaluation(self, *a, **kw):
        self.evals.append((a, kw))


class FakeStore:
    def __init__(self) -> None:
        self.rec, self.runs = FakeRecorder(), []

    @contextlib.contextmanager
    def run(self, kind, **kw):
        self.runs.append((kind, kw))
        yield self.rec

    def list_runs(self, **kw):
        assert kw == {"kind": "finetune", "status": "finished", "rule": "bp", "parent_id": 1}
        return [SimpleNamespace(id=5), SimpleNamespace(id=6)]


def fake_trained(ref):
    data = DataSpec(name="digits")
    rule = "fa" if str(ref) == "5" else "bp"
    spec = TrainSpec(kind="finetune", source="1", data=data, rule=RuleSpec(name=rule), model=ModelSpec(name="mlp"))
    return SimpleNamespace(model=trained(rule), spec=spec, run=SimpleNamespace(id=int(ref), parent_id=1))


def test_run_attack_persists_sweeps_checks_and_selection(monkeypatch):
    import sys

    import torch

    import ssbench.data
    from ssbench.attacks.job import run_attack

    # stand-ins for the checkpoint loader / device modules: this test is about the attack job only
    monkeypatch.setitem(sys.modules, "ssbench.training.checkpoint",
                        SimpleNamespace(load_trained=lambda store, ref, device, **kw: fake_trained(ref)))
    monkeypatch.setitem(sys.modules, "ssbench.training.device", SimpleNamespace(resolve_device=torch.device))

    _, _, xte, yte = digits()
    test = [(xte[i], int(yte[i])) for i in range(len(xte))]
    monkeypatch.setattr(ssbench.data, "load_data", lambda spec: SimpleNamespace(test=test, num_classes=10))
    store = FakeStore()
    spec = AttackSpec(target="5", attacks=("fgsm", "pgd"), modes=("feedback", "exact", "transfer"),
                      eps=(0.0, 0.05, 0.1), n_examples=80, steps=10, device="cpu")
    out = io.StringIO()
    run_id = run_attack(spec, store, console=Console(file=out, width=200), quiet=True)
    assert run_id == 7
    kind, kw = store.runs[0]
    assert kind == "attack" and kw["parent_id"] == 5 and kw["rule"] == "fa"
    rec = store.rec
    assert rec.summary["indices"] == select_indices(len(test), 80, 0) and rec.summary["surrogate_id"] == 6
    assert len(rec.sweeps) == 2 * 3  # one transaction per attack x mode
    for sweep in rec.sweeps:
        assert [p.epsilon for p in sweep] == [0.0, 0.05, 0.1]
        for p in sweep:
            assert p.n == 80 and len(p.correct) == 80 and p.robust == pytest.approx(p.correct.count("1") / 80)
    pgd = {s[0].mode: s for s in rec.sweeps if s[0].attack == "pgd"}
    assert pgd["feedback"][2].robust > pgd["exact"][2].robust + 0.3
    cons = {c.mode: c for c in rec.sanity if c.name == "gradient_consistency"}
    assert cons["feedback"].passed is False and cons["exact"].passed is True and cons["transfer"].passed is None
    flagged = {(c.name, c.mode) for c in rec.sanity if c.passed is False}
    assert ("whitebox_le_transfer", "feedback") in flagged  # BP-surrogate transfer beats the pseudo-gradient
    assert ("whitebox_le_transfer", "exact") not in flagged
    assert all(c.passed for c in rec.sanity if c.name == "eps0_equals_clean")
    assert "SANITY CHECK FAILED" in out.getvalue() and "worst case" in out.getvalue()
