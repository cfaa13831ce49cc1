"""The CLI as a user meets it: exit codes and one clear line for bad input, runs listed."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssbench.cli import app

runner = CliRunner(env={"COLUMNS": "200"})  # rich would crop tables at 80 columns


def _db(tmp_path: Path) -> list[str]:
    return ["--db", f"sqlite:///{tmp_path / 'cli.db'}"]


def _error_line(result) -> str:  # noqa: ANN001
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output  # one clear line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_lists_pipeline_in_order() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    out = result.output
    order = [out.index(f" {c} ") for c in ("pretrain", "finetune", "attack", "report")]
    assert order == sorted(order)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    tmp = tmp_path_factory.mktemp("cli")
    db = _db(tmp)
    result = runner.invoke(app, ["pretrain", "-d", "digits", "--classes", "0-4", "-m", "mlp", "--hidden", "32",
                                 "-e", "2", "-b", "64", "-q", *db])
    assert result.exit_code == 0, result.output
    return db, "1"


def test_pretrain_finetune_runs_show(pretrained: tuple[list[str], str]) -> None:
    db, run = pretrained
    result = runner.invoke(app, ["finetune", "--from", run, "-d", "digits", "--classes", "5-9", "--rule", "usf",
                                 "-e", "1", "-b", "64", "-q", *db])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(app, ["runs", *db])
    assert listing.exit_code == 0
    assert "usf" in listing.output and "pretrain" in listing.output and "finetune" in listing.output
    show = runner.invoke(app, ["show", "2", *db])
    assert show.exit_code == 0 and "usf" in show.output


def test_unknown_rule_is_one_line(pretrained: tuple[list[str], str]) -> None:
    db, run = pretrained
    result = runner.invoke(app, ["finetune", "--from", run, "-d", "digits", "--rule", "xfa", *db])
    assert result.exit_code == 2
    assert "unknown rule 'xfa'" in _error_line(result)


def test_wrong_checkpoint_is_one_line(pretrained: tuple[list[str], str], tmp_path: Path) -> None:
    db, run = pretrained
    result = runner.invoke(app, ["finetune", "--from", run, "-d", "digits", "-m", "resnet20", "--rule", "fa", *db])
    assert result.exit_code == 2
    assert "holds a mlp model, not resnet20" in _error_line(result)
    result = runner.invoke(app, ["finetune", "--from", str(tmp_path / "nope.pt"), "--rule", "fa", *db])
    assert result.exit_code == 2 and "not found" in _error_line(result)
    result = runner.invoke(app, ["finetune", "--from", "999", "--rule", "fa", *db])
    assert result.exit_code == 2 and "999" in _error_line(result)


def test_missing_data_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["pretrain", "-d", "mnist", "--data-dir", str(empty), "--no-download", *_db(tmp_path)])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "mnist" in line.lower() and str(empty) in line


def test_bad_recipe_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfinetune:\n  rules: [bp]\n  epochz: 3\n")
    result = runner.invoke(app, ["run", str(bad), *_db(tmp_path)])
    assert result.exit_code == 2
    assert "finetune.epochz" in _error_line(result)
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml"), *_db(tmp_path)])
    assert result.exit_code == 2 and "not found" in _error_line(result)
