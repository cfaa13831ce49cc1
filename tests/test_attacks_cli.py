"""`ssbench attack` builds the right AttackSpec (run_attack stubbed) and teaches the modes in --help."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import typer
from typer.testing import CliRunner

import ssbench


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
    monkeypatch.setitem(sys.modules, "ssbench.store", types.SimpleNamespace(open_store=lambda db: ("store", db)))
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
