"""`ssbench attack` builds the right AttackSpec (run_attack stubbed; the job is tested in
test_attacks_job.py) and teaches the modes in --help; epsilon fractions like 8/255."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

import ssbench
from ssbench.errors import SpecError
from ssbench.specs import AttackSpec, resolve_eps


def load_cli(monkeypatch):
    # import ssbench/cli/attack.py without the package __init__ (which registers every command)
    if "ssbench.cli" not in sys.modules:
        pkg = types.ModuleType("ssbench.cli")
        pkg.__path__ = [str(Path(ssbench.__file__).parent / "cli")]
        monkeypatch.setitem(sys.modules, "ssbench.cli", pkg)
    mod = importlib.import_module("ssbench.cli.attack")
    app = typer.Typer()
    mod.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep `attack` a named sub-command
    return app


def test_cli_builds_spec(monkeypatch):
    app = load_cli(monkeypatch)
    seen = {}
    import ssbench.attacks.job as job

    monkeypatch.setattr(job, "run_attack", lambda spec, store, **kw: seen.__setitem__("spec", spec) or 1)
    monkeypatch.setitem(sys.modules, "ssbench.store", types.SimpleNamespace(open_store=lambda db, **kw: ("store", db)))
    r = CliRunner().invoke(app, ["attack", "12", "--mode", "exact", "--mode", "transfer", "--attack", "pgd",
                                 "--eps", "0,0.1,0.05", "--n", "50", "--steps", "7", "--db", "sqlite://", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    spec = seen["spec"]
    assert spec.target == "12" and spec.modes == ("exact", "transfer") and spec.attacks == ("pgd",)
    assert spec.eps == (0.0, 0.1, 0.05) and spec.n_examples == 50 and spec.steps == 7
    r = CliRunner().invoke(app, ["attack", "12", "--mode", "all"])
    assert r.exit_code == 0 and seen["spec"].modes == ("feedback", "exact", "transfer")
    r = CliRunner().invoke(app, ["attack", "--help"], terminal_width=200)
    for word in ("feedback", "exact", "transfer", "surrogate"):
        assert word in r.output


def test_cli_eps_fractions_loss_and_mode_all(monkeypatch):
    app = load_cli(monkeypatch)
    seen = {}
    import ssbench.attacks.job as job

    monkeypatch.setattr(job, "run_attack", lambda spec, store, **kw: seen.__setitem__("spec", spec) or 1)
    monkeypatch.setitem(sys.modules, "ssbench.store", types.SimpleNamespace(open_store=lambda db, **kw: ("store", db)))
    r = CliRunner().invoke(app, ["attack", "3", "--eps", "8/255"])
    assert r.exit_code == 0, r.output
    assert seen["spec"].eps == (8 / 255,) and seen["spec"].loss == "ce" and not seen["spec"].transfer_optional
    r = CliRunner().invoke(app, ["attack", "3", "--eps", "0, 2/255,4/255,0.05", "--loss", "margin", "--mode", "all"])
    assert r.exit_code == 0, r.output
    spec = seen["spec"]
    assert spec.eps == (0.0, 2 / 255, 4 / 255, 0.05) and spec.loss == "margin" and spec.transfer_optional
    assert resolve_eps(spec.eps) == (0.0, 2 / 255, 4 / 255, 0.05)
    r = CliRunner().invoke(app, ["attack", "3", "--eps", "cifar"])
    assert seen["spec"].eps == "cifar" and resolve_eps("cifar")[-1] == 16 / 255
    for bad in ("8/0", "-0.1", "1/x", "papr"):
        r = CliRunner().invoke(app, ["attack", "3", "--eps", bad])
        assert isinstance(r.exception, SpecError) and "--eps" in str(r.exception), bad


def test_attack_spec_parses_fractions_from_recipes():
    assert AttackSpec(target="1", eps=["0", "8/255", 0.1]).eps == (0.0, 8 / 255, 0.1)
    assert AttackSpec(target="1", eps="0,1/255").eps == (0.0, 1 / 255)
    assert AttackSpec(target="1", eps="wide").eps == "wide"
    with pytest.raises(ValidationError):
        AttackSpec(target="1", eps=("1/0",))
    with pytest.raises(ValidationError):
        AttackSpec(target="1", loss="hinge")
