"""Every bad input gets one clear line (issue 12): exit code 2, one `error:` line on stderr, no
traceback, and nothing left behind in the store, because inputs are judged before a run row, a
job claim, or any work exists. Real CLI invocations: the CLI's behaviour is the point."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssbench.cli import app

runner = CliRunner(env={"COLUMNS": "200"})

RECIPE = """
name: tiny
data: {name: digits, classes: [0, 1, 2, 3, 4], val_fraction: 0.2, train_limit: 100, test_limit: 50}
models: [{name: mlp, hidden: [8]}]
pretrain: {epochs: 1, batch_size: 64}
finetune:
  data: {name: digits, classes: [5, 6, 7, 8, 9], val_fraction: 0.2, train_limit: 100, test_limit: 50}
  rules: [bp, fa]
  epochs: 1
attack: {suite: whitebox, attacks: [fgsm], eps: [0.0], n_examples: 20}
"""


def _rows(db: Path) -> tuple[int, int]:
    """(runs, claims) in a SQLite store; a store never created holds none."""
    if not db.exists():
        return 0, 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        return tuple(con.execute(f"select count(*) from {t}").fetchone()[0] if t in tables else 0  # type: ignore[return-value]
                     for t in ("runs", "claims"))


def refused(args: list[str], db: Path) -> str:
    """Invoke; assert the one-line refusal and an untouched store; return the line."""
    before = _rows(db)
    res = runner.invoke(app, [*args, "--db", f"sqlite:///{db}"])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # no traceback
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and not res.stdout.strip(), res.output
    assert _rows(db) == before, "a refused input left rows in the store"
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one finished pretrain run (id 1), for fine-tunes and reports to start from."""
    db = tmp_path_factory.mktemp("inputs") / "r.db"
    res = runner.invoke(app, ["pretrain", "-d", "digits", "--classes", "0-4", "-m", "mlp", "--hidden", "8", "-e", "1",
                              "--train-limit", "100", "--test-limit", "50", "-q", "--db", f"sqlite:///{db}"])
    assert res.exit_code == 0, res.output
    assert _rows(db) == (1, 0)
    return db


@pytest.fixture
def recipe(tmp_path: Path):  # noqa: ANN201
    def write(text: str = RECIPE, name: str = "r.yaml") -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    return write


# ---------------------------------------------------------------- 1. --data-dir / data.data_dir


@pytest.mark.parametrize("args", [
    ["pretrain", "-d", "digits"],
    ["train", "-d", "fashion-mnist", "--rule", "fa"],
    ["finetune", "--from", "1", "-d", "digits", "--classes", "5-9", "--rule", "fa"],
])
def test_data_dir_that_does_not_exist(store: Path, tmp_path: Path, args: list[str]) -> None:
    line = refused([*args, "--data-dir", str(tmp_path / "nope"), "-e", "1", "-q"], store)
    assert f"data folder {tmp_path / 'nope'} does not exist" in line


@pytest.mark.parametrize("where", ["data", "finetune"])
def test_recipe_data_dir_that_does_not_exist(recipe, tmp_path: Path, where: str) -> None:  # noqa: ANN001
    text = RECIPE.replace("classes: [0, 1, 2, 3, 4]" if where == "data" else "classes: [5, 6, 7, 8, 9]",
                          f"data_dir: {tmp_path / 'nope'}, classes: [0, 1]")
    line = refused(["run", recipe(text), "-q"], tmp_path / "r.db")
    assert f"data folder {tmp_path / 'nope'} does not exist" in line
    # --dry-run judges the recipe the same way
    refused(["run", recipe(text), "--dry-run"], tmp_path / "r.db")


# ---------------------------------------------------------------- 2. overrides: 0 is a value


@pytest.mark.parametrize("option, value", [
    ("--epochs", "0"), ("--epochs", "-1"), ("--n", "0"), ("--train-limit", "0"), ("--test-limit", "0"),
])
def test_run_override_a_job_cannot_hold(recipe, tmp_path: Path, option: str, value: str) -> None:  # noqa: ANN001
    line = refused(["run", recipe(), option, value, "-q"], tmp_path / "r.db")
    assert line.startswith(f"error: {option} {value}: must be 1 or more")


@pytest.mark.parametrize("value", ["", ","])
def test_run_seeds_naming_no_seed(recipe, tmp_path: Path, value: str) -> None:  # noqa: ANN001
    assert "--seeds names no seed" in refused(["run", recipe(), "--seeds", value, "-q"], tmp_path / "r.db")


def test_run_n_without_an_attack_stage(recipe, tmp_path: Path) -> None:  # noqa: ANN001
    text = RECIPE.split("attack:")[0]
    assert "has no attack stage" in refused(["run", recipe(text), "--n", "5", "-q"], tmp_path / "r.db")


def test_override_zero_refused_by_the_library_too() -> None:
    from ssbench.errors import SpecError
    from ssbench.recipes import Overrides

    for field, option in (("epochs", "--epochs"), ("n_examples", "--n"), ("train_limit", "--train-limit")):
        with pytest.raises(SpecError, match=f"^{option} 0: must be 1 or more"):
            Overrides(**{field: 0})
    with pytest.raises(SpecError, match="names no seed"):
        Overrides(seeds=())


# ---------------------------------------------------------------- 3. class subsets


@pytest.mark.parametrize("args, message", [
    (["pretrain", "-d", "digits", "--classes", "3"], "[3] is one class"),
    (["pretrain", "-d", "digits", "--classes", "3", "--task", "hashing"], "[3] is one class"),
    (["finetune", "--from", "1", "-d", "digits", "--classes", "7", "--rule", "fa"], "[7] is one class"),
    (["pretrain", "-d", "digits", "--classes", ""], "[] is empty"),
    (["pretrain", "-d", "digits", "--classes", "3,3"], "repeats a class"),
    (["pretrain", "-d", "digits", "--classes", "8-12"], "out of range"),
])
def test_cli_class_subsets(store: Path, args: list[str], message: str) -> None:
    assert message in refused([*args, "-e", "1", "-q"], store)


@pytest.mark.parametrize("old, new, message", [
    ("classes: [5, 6, 7, 8, 9]", "classes: [5]", "finetune.data.classes"),
    ("classes: [0, 1, 2, 3, 4]", "classes: [3, 3]", "data.classes"),
    ("classes: [0, 1, 2, 3, 4]", "classes: [8, 12]", "out of range"),
])
def test_recipe_class_subsets(recipe, tmp_path: Path, old: str, new: str, message: str) -> None:  # noqa: ANN001
    assert message in refused(["run", recipe(RECIPE.replace(old, new)), "-q"], tmp_path / "r.db")


# ---------------------------------------------------------------- 4. grid size


def test_huge_grid_refused_before_it_is_expanded(recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import importlib

    planning = importlib.import_module("ssbench.recipes.plan")  # the module: ssbench.recipes.plan is the function

    def expanded(*_a, **_kw):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the grid was expanded into jobs")

    monkeypatch.setattr(planning, "Job", expanded)  # every planned job is a Job; counting makes none
    seeds = ", ".join(map(str, range(200_000)))
    text = (f"name: huge\nseeds: [{seeds}]\ndata: {{name: digits}}\nmodels: [{{name: mlp, hidden: [8]}}]\n"
            "finetune: {from_scratch: true, rules: [bp, fa, dfa, usf, frsf, brsf, ifa]}\n")
    path = recipe(text)
    for extra in ([], ["--dry-run"]):
        line = refused(["run", path, *extra, "-q"], tmp_path / "r.db")
        assert line == ("error: recipe huge expands to 1,400,000 jobs (limit 10,000); pass --max-jobs 1400000 "
                        "to run it anyway, or fewer seeds / models / rules")


def test_max_jobs_is_the_limit(recipe, tmp_path: Path) -> None:  # noqa: ANN001
    path = recipe()  # 1 pretrain + 2 fine-tunes + 2 attacks
    assert "expands to 5 jobs (limit 4)" in refused(["run", path, "--max-jobs", "4", "--dry-run"], tmp_path / "r.db")
    res = runner.invoke(app, ["run", path, "--max-jobs", "5", "--dry-run", "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert res.exit_code == 0 and "5 jobs" in res.output, res.output


# ---------------------------------------------------------------- 5. report folders


def test_report_out_is_a_file(store: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    line = refused(["report", "--format", "markdown", "--out", str(tmp_path / "f")], store)
    assert line == f"error: --out {tmp_path / 'f'} is a file; name a folder"
    line = refused(["report", "--format", "markdown", "--out", str(tmp_path / "f" / "sub" / "dir")], store)
    assert f"{tmp_path / 'f'} is a file, so the folder cannot be created" in line


def test_run_out_is_checked_before_any_job(recipe, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "f").write_text("x")
    with_report = RECIPE + "report: {formats: [markdown]}\n"
    db = tmp_path / "r.db"
    assert "is a file; name a folder" in refused(["run", recipe(with_report), "--out", str(tmp_path / "f"), "-q"], db)
    assert "cannot be created" in refused(["run", recipe(with_report), "--out", str(tmp_path / "f" / "x"), "-q"], db)
    from_recipe = RECIPE + f"report: {{formats: [markdown], out: {tmp_path / 'f'}}}\n"
    assert refused(["run", recipe(from_recipe), "-q"], db) == f"error: report.out {tmp_path / 'f'} is a file; name a folder"
    # --out where nothing would be written is not silently ignored
    assert "has no report stage" in refused(["run", recipe(), "--out", str(tmp_path / "rep"), "-q"], db)
    assert "--no-report" in refused(["run", recipe(with_report), "--no-report", "--out", str(tmp_path / "rep"), "-q"], db)
