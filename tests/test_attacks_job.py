"""The attack job end to end against an in-memory fake store (orchestration, persistence, checks)."""
from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from ssbench.attacks import select_indices
from ssbench.errors import SpecError
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
    def __init__(self, siblings=(5, 6)) -> None:
        self.rec, self.runs, self.siblings = FakeRecorder(), [], siblings

    @contextlib.contextmanager
    def run(self, kind, **kw):
        self.runs.append((kind, kw))
        yield self.rec

    def list_runs(self, **kw):
        assert kw == {"kind": "finetune", "status": "finished", "rule": "bp", "parent_id": 1}
        return [SimpleNamespace(id=i) for i in self.siblings]


# run id -> (rule, architecture, classes): 5 is the FA target, 6 its BP sibling; 8-10 are wrong surrogates
RUNS = {5: ("fa", "mlp", None), 6: ("bp", "mlp", None), 8: ("fa", "mlp", None), 9: ("bp", "cnn", None),
        10: ("bp", "mlp", tuple(range(9, -1, -1)))}  # 10: labels remapped in reverse: another task


def fake_trained(ref):
    rule, arch, classes = RUNS[int(ref)]
    data = DataSpec(name="digits", classes=classes)
    spec = TrainSpec(kind="finetune", source="1", data=data, rule=RuleSpec(name=rule), model=ModelSpec(name=arch))
    meta = SimpleNamespace(model=ModelSpec(name=arch).model_dump(), num_classes=10, in_channels=1, image_size=8,
                           task="classification", rule=None if rule == "bp" else {"name": rule, "seed": 0})
    return SimpleNamespace(model=trained(rule, "cnn" if arch == "cnn" else "mlp"), spec=spec, meta=meta,
                           run=SimpleNamespace(id=int(ref), parent_id=1))


def fake_env(monkeypatch):
    """Stand-ins for the checkpoint loader / device / data modules: these tests are about the job."""
    import sys

    import torch

    import ssbench.data

    monkeypatch.setitem(sys.modules, "ssbench.training.checkpoint",
                        SimpleNamespace(load_trained=lambda store, ref, device, **kw: fake_trained(ref)))
    monkeypatch.setitem(sys.modules, "ssbench.training.device", SimpleNamespace(resolve_device=torch.device))
    _, _, xte, yte = digits()
    test = [(xte[i], int(yte[i])) for i in range(len(xte))]
    monkeypatch.setattr(ssbench.data, "load_data", lambda spec: SimpleNamespace(test=test, num_classes=10))
    return test


def test_run_attack_persists_sweeps_checks_and_selection(monkeypatch):
    from ssbench.attacks.job import run_attack

    test = fake_env(monkeypatch)
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


@pytest.mark.parametrize("ref, why", [("8", "rule fa, not bp"), ("9", "architecture cnn"), ("10", "classes")])
def test_named_surrogate_must_be_bp_same_model_same_data(monkeypatch, ref, why):
    from ssbench.attacks.job import run_attack

    fake_env(monkeypatch)
    spec = AttackSpec(target="5", attacks=("fgsm",), modes=("transfer",), eps=(0.0, 0.1), n_examples=10,
                      surrogate=ref, device="cpu")
    store = FakeStore()
    with pytest.raises(SpecError, match=why) as err:
        run_attack(spec, store, console=Console(file=io.StringIO()), quiet=True)
    assert "\n" not in str(err.value) and store.runs == []  # one line; nothing recorded
    # the automatic search skips the same misfits and takes the fitting sibling
    store = FakeStore(siblings=(6, 8, 9, 10))
    run_attack(spec.model_copy(update={"surrogate": None}), store, console=Console(file=io.StringIO()), quiet=True)
    assert store.rec.summary["surrogate_id"] == 6


def test_mode_all_without_bp_sibling_skips_transfer_with_a_note(monkeypatch):
    from ssbench.attacks.job import run_attack

    fake_env(monkeypatch)
    spec = AttackSpec(target="5", attacks=("fgsm",), modes=("feedback", "exact", "transfer"), eps=(0.0, 0.1),
                      n_examples=20, device="cpu", transfer_optional=True)
    store = FakeStore(siblings=(5,))  # only the target itself
    out = io.StringIO()
    run_attack(spec, store, console=Console(file=out, width=300), quiet=True)
    rec = store.rec
    assert sorted(s[0].mode for s in rec.sweeps) == ["exact", "feedback"]
    assert not any(c.mode == "transfer" for c in rec.sanity)
    assert "transfer" in rec.summary["skipped_modes"] and rec.summary["surrogate_id"] is None
    assert "transfer mode skipped" in out.getvalue() and "no finished BP fine-tune" in out.getvalue()
    # named explicitly, transfer without a surrogate stays an error
    with pytest.raises(SpecError, match="no finished BP fine-tune"):
        run_attack(spec.model_copy(update={"transfer_optional": False}), FakeStore(siblings=()),
                   console=Console(file=io.StringIO()), quiet=True)
    # and a named surrogate that does not fit is an error even with --mode all
    with pytest.raises(SpecError, match="not bp"):
        run_attack(spec.model_copy(update={"surrogate": "8"}), FakeStore(), console=Console(file=io.StringIO()), quiet=True)


def test_transfer_on_a_bp_target_is_skipped_with_a_note_not_an_error(monkeypatch):
    """A recipe's BP fine-tune is attacked with the group's modes: transfer there would need a BP
    sibling of a BP model (itself), and used to fail every rerun. It is skipped, saying why."""
    from ssbench.attacks.job import run_attack

    fake_env(monkeypatch)
    spec = AttackSpec(target="6", attacks=("fgsm",), modes=("feedback", "exact", "transfer"), eps=(0.0, 0.1),
                      n_examples=20, device="cpu")  # transfer named explicitly, not optional
    store = FakeStore(siblings=(6,))  # the only BP fine-tune of the parent is the target itself
    out = io.StringIO()
    run_attack(spec, store, console=Console(file=out, width=300), quiet=False)
    rec = store.rec
    assert sorted(s[0].mode for s in rec.sweeps) == ["exact", "feedback"]
    assert "trained with bp" in rec.summary["skipped_modes"]["transfer"]
    assert "transfer mode skipped" in out.getvalue()
    assert "fgsm [feedback]" in out.getvalue() and "fgsm [exact]" in out.getvalue()  # labels not eaten as markup
    # a BP model named with --surrogate still makes a transfer attack of a BP target
    store = FakeStore()
    run_attack(spec.replace(surrogate="6"), store, console=Console(file=io.StringIO()), quiet=True)
    assert "transfer" in {s[0].mode for s in store.rec.sweeps}
