"""Every bad input: exit code 2, exactly one line on stderr, no traceback, the store untouched.

One table, by category (usage, numbers, names, data, recipes, stores, checkpoints, outputs), so a new
command's bad inputs are added here and held to the same rule. The database file is hashed before
and after every case: a refused input must leave nothing behind, not even a failed run.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ssbench.cli import app

runner = CliRunner(env={"COLUMNS": "200"})
QUICKSTART = str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A store with one finished pretrain (run 1), and files of the wrong kind to point options at."""
    from ssbench.training.checkpoint import FORMAT

    tmp = tmp_path_factory.mktemp("bad")
    db = f"sqlite:///{tmp / 'r.db'}"
    ok = runner.invoke(app, ["pretrain", "-d", "digits", "-m", "mlp", "--hidden", "16", "-e", "1", "-b", "64",
                             "-q", "--db", db])
    assert ok.exit_code == 0, ok.output
    meta = {"model": {"name": "mlp", "hidden": [16]}, "num_classes": 10, "in_channels": 1, "image_size": 8,
            "mean": [0.0], "std": [1.0], "task": "classification", "rule": None}
    torch.save({"format": FORMAT, "meta": {"model": {"name": "mlp"}}, "train_spec": {}, "state_dict": {}},
               tmp / "meta-incomplete.pt")
    torch.save({"format": FORMAT}, tmp / "meta-missing.pt")
    torch.save({"format": FORMAT, "meta": {**meta, "num_classes": "ten"}, "train_spec": {}, "state_dict": {}},
               tmp / "meta-wrong-type.pt")
    torch.save({"format": FORMAT, "meta": meta, "train_spec": {"epochs": -3}, "state_dict": {}},
               tmp / "spec-invalid.pt")
    torch.save({"format": FORMAT, "meta": meta, "train_spec": {}}, tmp / "no-weights.pt")
    torch.save({"weights": 1}, tmp / "foreign.pt")
    (tmp / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp / "not-sqlite.db").write_text("this is not a database\n")
    (tmp / "a-file").write_text("x")
    (tmp / "binary.yaml").write_bytes(bytes(range(128, 256)))
    (tmp / "huge.yaml").write_text("name: huge\nseeds: [" + ", ".join(map(str, range(200_000))) + "]\n"
                                   "finetune:\n  from_scratch: true\n  rules: [bp, fa, dfa, usf, brsf, frsf, ifa]\n")
    return {"db": db, "file": str(tmp / "r.db"), "tmp": str(tmp)}


def _fingerprint(path: str) -> tuple[str, ...]:
    out = []
    for p in (path, path + "-wal"):
        out.append(hashlib.sha256(Path(p).read_bytes()).hexdigest() if os.path.exists(p) else "-")
    return tuple(out)


# (id, arguments, text the one line must contain); {run} = the finished run, {tmp} = a scratch folder.
# "--db" is added unless the case names its own store or the command takes none.
CASES: list[tuple[str, list[str], str]] = [
    # usage: the parser's errors, one line naming the option and what it accepts
    ("no-such-option", ["show", "-1"], "No such option: -1"),
    ("int-option-text", ["runs", "--parent", "abc"], "'--parent'"),
    ("batch-size-zero", ["pretrain", "-b", "0"], "'--batch-size'"),
    ("epochs-negative", ["pretrain", "--epochs", "-1"], "'--epochs'"),
    ("limit-negative", ["runs", "--limit", "-1"], "'--limit'"),
    ("table-unknown", ["report", "--table", "nosuch"], "'nosuch' is not one of"),
    ("format-unknown", ["report", "--format", "pdf"], "'pdf' is not one of"),
    ("retries-negative", ["run", QUICKSTART, "--retries", "-1"], "'--retries'"),
    ("command-unknown", ["nosuchcmd"], "No such command 'nosuchcmd'"),
    ("kind-unknown", ["runs", "--kind", "nosuch"], "'nosuch' is not one of 'pretrain'"),
    ("status-unknown", ["runs", "--status", "weird"], "'weird' is not one of 'running'"),
    ("suite-unknown", ["attack", "{run}", "--suite", "nosuch"], "got 'nosuch'"),
    # numbers: non-finite, out of range, not numbers
    ("eps-inf", ["attack", "{run}", "--eps", "inf", "--attack", "fgsm"], "--eps 'inf'"),
    ("eps-nan", ["attack", "{run}", "--eps", "0,nan"], "--eps"),
    ("eps-negative", ["attack", "{run}", "--eps", "-0.1"], "--eps"),
    ("lr-inf", ["pretrain", "--lr", "inf"], "finite"),
    ("lr-nan", ["pretrain", "--lr", "nan"], "finite"),
    ("theta-inf", ["train", "--rule", "ifa", "--theta", "inf"], "finite"),
    ("weight-var-nan", ["train", "--init", "gaussian", "--weight-var", "nan"], "finite"),
    ("seed-negative", ["pretrain", "--seed", "-1"], "seed"),
    ("attack-seed-negative", ["attack", "{run}", "--seed", "-1"], "seed"),
    ("attack-n-zero", ["attack", "{run}", "--n", "0"], "n_examples"),
    ("attack-steps-zero", ["attack", "{run}", "--steps", "0"], "steps"),
    ("hessian-n-zero", ["analyze", "hessian", "{run}", "--n", "0"], "n_examples"),
    ("hessian-radius-negative", ["analyze", "hessian", "{run}", "--radius", "-1"], "surface_radius"),
    ("val-fraction-one", ["pretrain", "--val-fraction", "1.5"], "val_fraction"),
    ("hidden-text", ["pretrain", "-m", "mlp", "--hidden", "abc"], "--hidden 'abc'"),
    ("hidden-empty", ["pretrain", "-m", "mlp", "--hidden", ""], "invalid hidden: Tuple should have at least 1 item"),
    ("hidden-zero", ["pretrain", "-m", "mlp", "--hidden", "0,5"], "invalid hidden.0"),
    ("trainability-classes-empty", ["analyze", "trainability", "--rule", "fa", "--classes", ""], "[] is empty"),
    ("seeds-text", ["run", QUICKSTART, "--seeds", "abc"], "--seeds 'abc'"),
    ("classes-text", ["pretrain", "--classes", "a-b"], "--classes 'a-b'"),
    ("classes-repeat", ["pretrain", "--classes", "3,3"], "repeats a class"),
    # names: one line listing the choices
    ("rule-unknown", ["train", "--rule", "xfa"], "unknown rule 'xfa'"),
    ("model-unknown", ["pretrain", "-m", "nosuchnet"], "nosuchnet"),
    ("dataset-unknown", ["pretrain", "-d", "nosuchdata"], "nosuchdata"),
    ("attack-unknown", ["attack", "{run}", "--attack", "nosuchattack"], "nosuchattack"),
    ("mode-unknown", ["attack", "{run}", "--mode", "sideways"], "sideways"),
    ("filter-rule-unknown", ["runs", "--rule", "xfa"], "unknown rule 'xfa'; choose from: bp"),
    ("filter-model-unknown", ["runs", "--model", "nonet"], "unknown model 'nonet'"),
    ("filter-dataset-unknown", ["report", "--dataset", "nodata"], "unknown data set 'nodata'"),
    ("run-unknown", ["show", "999"], "no run 999"),
    ("run-not-a-number", ["show", "abc"], "'abc' is not a run id"),
    # data: a folder that is not there, too few classes, classes the data set lacks
    ("data-dir-missing", ["pretrain", "--data-dir", "{tmp}/no-such-folder"], "data folder {tmp}/no-such-folder does not exist"),
    ("classes-one", ["pretrain", "--classes", "3"], "at least two classes"),
    ("classes-out-of-range", ["pretrain", "-d", "digits", "--classes", "8-12"], "12"),
    # recipes: refused before anything runs; zero is a value, not "unset"
    ("recipe-binary", ["run", "{tmp}/binary.yaml"], "not a text file"),
    ("recipe-folder", ["run", "{tmp}"], "is a folder"),
    ("run-epochs-zero", ["run", QUICKSTART, "--epochs", "0"], "--epochs 0"),
    ("run-n-zero", ["run", QUICKSTART, "--n", "0"], "--n 0"),
    ("run-cpus-negative", ["run", QUICKSTART, "--cpus-per-job", "-1", "--dry-run"], "cpus"),
    ("run-huge-grid", ["run", "{tmp}/huge.yaml", "--dry-run"], "expands to 1,400,000 jobs"),
    # outputs: a file where a folder is wanted (run checks before running the grid)
    ("report-out-file", ["report", "--out", "{tmp}/a-file"], "is a file"),
    ("run-out-file", ["run", QUICKSTART, "--out", "{tmp}/a-file"], "is a file"),
    # stores: one line, password never echoed
    ("db-not-a-url", ["runs", "--db", "notaurl"], "not a database URL"),
    ("db-unknown-dialect", ["runs", "--db", "foo://x/y"], "no dialect/driver 'foo'"),
    ("db-unreachable", ["runs", "--db", "postgresql+psycopg://user:s3cret@127.0.0.1:1/db"], "user:***@127.0.0.1:1"),
    ("db-not-sqlite", ["runs", "--db", "sqlite:///{tmp}/not-sqlite.db"], "file is not a database"),
    ("db-folder-impossible", ["runs", "--db", "sqlite:///{tmp}/a-file/sub/r.db"], "cannot create the folder"),
    # checkpoints: "not a valid ssbench checkpoint", never a KeyError / TypeError
    ("ckpt-meta-incomplete", ["attack", "{tmp}/meta-incomplete.pt", "--attack", "fgsm"], "lacks num_classes"),
    ("ckpt-meta-missing", ["attack", "{tmp}/meta-missing.pt", "--attack", "fgsm"], "no model metadata"),
    ("ckpt-meta-wrong-type", ["attack", "{tmp}/meta-wrong-type.pt"], "not a valid ssbench checkpoint"),
    ("ckpt-spec-invalid", ["attack", "{tmp}/spec-invalid.pt"], "training configuration does not validate"),
    ("ckpt-no-weights", ["attack", "{tmp}/no-weights.pt"], "holds no weights"),
    ("ckpt-meta-missing-finetune", ["finetune", "--from", "{tmp}/meta-missing.pt", "--rule", "fa"], "no model metadata"),
    ("ckpt-foreign", ["attack", "{tmp}/foreign.pt"], "is not an ssbench checkpoint"),
    ("ckpt-junk", ["attack", "{tmp}/junk.pt"], "not a readable ssbench checkpoint"),
    ("ckpt-missing", ["attack", "{tmp}/nope.pt"], "not found"),
]


@pytest.mark.parametrize(("args", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world: dict[str, str], args: list[str], needle: str) -> None:
    argv = [a.replace("{run}", "1").replace("{tmp}", world["tmp"]) for a in args]
    if "--db" not in argv and argv[0] != "nosuchcmd":
        argv += ["--db", world["db"]]
    before = _fingerprint(world["file"])
    result = runner.invoke(app, argv)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle.replace("{tmp}", world["tmp"]) in lines[0], lines[0]
    assert "Traceback" not in result.output and "s3cret" not in result.output
    assert _fingerprint(world["file"]) == before, "a refused input changed the store"


def test_unexpected_error_is_one_line_with_debug_hint(world: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An error no family covers (a bug): its one-line summary, exit 1, and --debug shows the traceback."""
    import ssbench.store

    def broken(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(ssbench.store, "open_store", broken)
    result = runner.invoke(app, ["runs", "--db", world["db"]])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: RuntimeError: something nobody foresaw (an unexpected error; rerun with --debug for the traceback)"]
    debug = runner.invoke(app, ["--debug", "runs", "--db", world["db"]])
    assert isinstance(debug.exception, RuntimeError)  # re-raised: the traceback is the user's to see


@pytest.mark.parametrize(
    ("err", "needle"),
    [
        (OSError(28, "No space left on device", "/mnt/x/last.pt"), "no space left on the device (/mnt/x/last.pt)"),
        (OSError(30, "Read-only file system", "/ro/r.db"), "read-only file system (/ro/r.db)"),
        (PermissionError(13, "Permission denied", "/root/x"), "permission denied (/root/x)"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                      "allocate 268435456000 bytes. Error code 12"), "out of memory (asked for 250.0 GiB)"),
        (MemoryError(), "out of memory"),
    ],
)
def test_environment_errors_are_one_line(err: BaseException, needle: str) -> None:
    from ssbench.cli.app import USER_ERROR, error_line

    line, code = error_line(err)
    assert code == USER_ERROR and needle in line and "\n" not in line


def test_database_errors_are_one_line() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from ssbench.cli.app import USER_ERROR, error_line

    full = OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))
    line, code = error_line(full)
    assert code == USER_ERROR and line.startswith("results store: database or disk is full; free space")
    ro = OperationalError("INSERT ...", {}, sqlite3.OperationalError("attempt to write a readonly database"))
    assert "read-only" in error_line(ro)[0]


def test_real_process_prints_one_line(world: dict[str, str]) -> None:
    """The installed entry point (not the test runner): stderr is exactly the one line."""
    for argv in (["attack", "1", "--eps", "inf", "--db", world["db"]], ["show", "-1"]):
        proc = subprocess.run([sys.executable, "-c", "from ssbench.cli import main; main()", *argv],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_control_characters_in_user_text_are_escaped(tmp_path: Path) -> None:
    """A tag or an error carrying terminal escapes (retitle, clear screen, one-byte CSI) and rich
    markup is printed inert and visible, by `show` and by `runs`."""
    from ssbench.store import open_store
    from ssbench.store.models import Run

    db = f"sqlite:///{tmp_path / 'esc.db'}"
    evil = "x\x1b]0;pwned\x07y\x1b[2J\x9b31m[/]z"
    ok = runner.invoke(app, ["pretrain", "-d", "digits", "-m", "mlp", "--hidden", "8", "-e", "1", "-q",
                             "--tag", evil, "--db", db])
    assert ok.exit_code == 0, ok.output
    store = open_store(db)
    with store.session() as s, s.begin():  # the same text as the error of a failed run
        row = s.get(Run, 1)
        row.status, row.error = "failed", evil
    visible = r"x\x1b]0;pwned\x07y\x1b[2J\x9b31m[/]z"
    for argv in (["show", "1", "--db", db], ["runs", "--db", db]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert not {"\x1b", "\x07", "\x9b"} & set(result.output), result.output
    shown = runner.invoke(app, ["show", "1", "--no-config", "--db", db]).output
    assert f"tags         {visible}" in shown and f"error: {visible}" in shown
    assert r"x\x1b]0;pwned" in runner.invoke(app, ["runs", "--db", db]).output
