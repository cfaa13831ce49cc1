"""The CLI as a user meets it: exit codes and one clear line for bad input, runs listed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
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


def _train_lrs(db: list[str], run_id: int) -> list[float]:
    from ssbench.store import open_store

    m = open_store(db[1]).frame_metrics()
    m = m[(m.run_id == run_id) & (m.split == "train") & (m.name == "lr")].sort_values("epoch")
    return m.value.tolist()


@pytest.mark.parametrize(
    ("options", "make_scheduler"),
    [
        (["--scheduler", "multistep", "--milestones", "2,4", "--gamma", "0.5"],
         lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.5)),
        (["--scheduler", "step", "--step-size", "2", "--gamma", "0.3"],
         lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3)),
        (["--scheduler", "cosine"], lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)),
    ],
    ids=["multistep", "step", "cosine"],
)
def test_scheduler_lr_per_epoch_matches_torch(tmp_path: Path, options: list[str], make_scheduler) -> None:  # noqa: ANN001
    db = _db(tmp_path)
    result = runner.invoke(app, ["pretrain", "-d", "digits", "-m", "mlp", "--hidden", "16", "--train-limit", "100",
                                 "-e", "5", "-b", "50", "--lr", "0.1", "-q", *options, *db])
    assert result.exit_code == 0, result.output
    # torch's own scheduler, stepped once per epoch: the lr each epoch trains with
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt)
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert _train_lrs(db, 1) == pytest.approx(expected, rel=1e-12)


def test_optimizer_options_reach_the_optimizer(tmp_path: Path) -> None:
    from ssbench.specs import TrainSpec
    from ssbench.store import open_store
    from ssbench.training.optim import build_optimizer

    db = _db(tmp_path)
    common = ["pretrain", "-d", "digits", "-m", "mlp", "--hidden", "8", "--train-limit", "50", "-e", "1", "-q", *db]
    assert runner.invoke(app, [*common, "--nesterov", "--momentum", "0.8"]).exit_code == 0
    assert runner.invoke(app, [*common, "--optimizer", "adam", "--betas", "0.8,0.95", "--lr", "0.001"]).exit_code == 0
    sgd, adam = (TrainSpec.model_validate(r.config) for r in open_store(db[1]).list_runs())
    net = torch.nn.Linear(2, 2)
    g = build_optimizer(net, sgd.optim).param_groups[0]
    assert g["nesterov"] is True and g["momentum"] == 0.8
    a = build_optimizer(net, adam.optim)
    assert isinstance(a, torch.optim.Adam) and a.param_groups[0]["betas"] == (0.8, 0.95)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--scheduler", "multistep"], "scheduler multistep needs milestones"),
        (["--milestones", "3"], "milestones are a multistep option"),
        (["--optimizer", "adam", "--nesterov"], "nesterov needs optimizer sgd"),
        (["--betas", "0.9"], "--betas '0.9': give two numbers"),
    ],
)
def test_bad_optimizer_options_are_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    result = runner.invoke(app, ["pretrain", "-d", "digits", *options, *_db(tmp_path)])
    assert result.exit_code == 2
    assert message in _error_line(result)


def test_unmet_recipe_requirement_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text("name: big\nrequires: [gpu]\nfinetune:\n  from_scratch: true\n  rules: [bp]\n")
    result = runner.invoke(app, ["run", str(recipe), *_db(tmp_path)])
    assert result.exit_code == 2
    assert "recipe big requires a GPU" in _error_line(result)


def test_sigterm_marks_the_run_failed_saying_why(tmp_path: Path) -> None:
    """A scheduler's (or torchrun's) SIGTERM: exit status 143 and a failed run that says what ended it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from ssbench.store import open_store

    url = f"sqlite:///{tmp_path / 'r.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssbench", "train", "--rule", "fa", "--dataset", "digits", "--image-size", "28",
         "--epochs", "500", "--db", url, "--quiet"],
        env={**os.environ, "SSBENCH_HOME": str(tmp_path / "home")}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (tmp_path / "r.db").exists():
                runs = open_store(url).frame_runs()
                if len(runs) and (runs["status"] == "running").all():
                    break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    run = open_store(url).frame_runs().iloc[0]
    assert run["status"] == "failed"
    assert run["error"].startswith("Terminated: ended by SIGTERM"), run["error"]
