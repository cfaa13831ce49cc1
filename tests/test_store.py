from __future__ import annotations

import hashlib
import json
import sqlite3

import pandas as pd
import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from ssbench.errors import CheckpointError, RunNotFoundError
from ssbench.store import AlignmentRow, Base, SanityCheck, SweepPoint, config_hash, open_store

TABLES = {"runs", "metrics", "alignment", "evaluations", "sweep_points", "sanity_checks", "checkpoints"}


class Cfg(BaseModel):
    lr: float = 0.1
    name: str = "x"
    layers: tuple[int, ...] = (3, 4)


@pytest.fixture
def store(store_url):
    """A fresh store on each back end (SQLite file, real PostgreSQL)."""
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'db' / 'results.db'}")
    yield s
    s.close()


def _model_run(store, rule="fa", seed=0, **kw):
    with store.run("finetune", config=Cfg(lr=0.01 * (seed + 1)), seed=seed, rule=rule, model="lenet",
                   dataset="digits", task="classification", **kw) as rec:
        pass
    return rec.run_id


def test_migration_from_empty_database_creates_all_tables_at_head(store_url, tmp_path, monkeypatch):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ssbench.store.engine import MIGRATIONS, alembic_config

    monkeypatch.chdir(tmp_path)  # migrations must not depend on the working directory
    store = open_store(store_url)
    names = set(sa.inspect(store.engine).get_table_names())
    assert TABLES | {"alembic_version"} <= names
    with store.engine.connect() as conn:
        versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert versions == heads and len(list((MIGRATIONS / "versions").glob(f"{versions[0]}_*.py"))) == 1
    # the hand-written migration and the ORM describe the same schema
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    # reopening is a no-op and keeps data
    rid = _model_run(store)
    store.close()
    again = open_store(store_url)
    assert again.get_run(rid).status == "finished"
    again.close()


def test_wal_foreign_keys_and_busy_timeout(sqlite_store, tmp_path):
    store = sqlite_store
    con = sqlite3.connect(tmp_path / "db" / "results.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent property of the file
    con.close()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    with pytest.raises(sa.exc.IntegrityError):
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO metrics (run_id, epoch, split, name, value) VALUES (999, 1, 'val', 'loss', 1.0)")


def test_default_url_uses_ssbench_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSBENCH_HOME", str(tmp_path / "h"))
    store = open_store()
    assert (tmp_path / "h" / "results.db").exists()
    assert store.home == tmp_path / "h"
    store.close()
    monkeypatch.setenv("SSBENCH_DB", f"sqlite:///{tmp_path / 'other.db'}")
    store = open_store()
    assert (tmp_path / "other.db").exists() and store.home == tmp_path
    store.close()


def test_in_memory_sqlite_works():
    store = open_store("sqlite://")
    rid = _model_run(store)
    assert store.get_run(rid).status == "finished"


def test_run_row_metadata(store):
    cfg = Cfg(lr=0.5)
    with store.run("pretrain", config=cfg, seed=3, recipe="r", tags=("a", "b"), rule="bp", model="mlp",
                   dataset="digits", task="classification", device="cpu") as rec:
        inside = store.get_run(rec.run_id)
        assert inside.status == "running"  # committed at entry: visible to other sessions
    run = store.get_run(rec.run_id)
    assert run.status == "finished" and run.finished_at is not None and run.seconds >= 0
    assert run.config == {"lr": 0.5, "name": "x", "layers": [3, 4]}
    expected = hashlib.sha256(json.dumps({"layers": [3, 4], "lr": 0.5, "name": "x"}, separators=(",", ":")).encode()).hexdigest()
    assert run.config_hash == expected == config_hash(cfg)
    assert run.tags == ["a", "b"] and run.seed == 3 and run.recipe == "r" and run.device == "cpu"
    assert set(run.versions) >= {"torch", "torchvision", "ssbench", "torchattacks", "foolbox", "numpy", "python"}
    assert run.host and run.error is None
    assert store.get_run(str(rec.run_id)).id == rec.run_id


def test_round_trip_of_every_record(store, tmp_path):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights" * 1000)
    with store.run("finetune", config=Cfg(), rule="usf") as rec:
        rec.log_epoch(1, "train", {"loss": 1.25, "accuracy": 0.5}, seconds=2.0)
        rec.log_epoch(1, "val", {"accuracy": 0.625, "loss": float("nan")})
        rec.log_alignment(1, [AlignmentRow("conv1", 12.5, 0.75, 30.0), AlignmentRow("fc", None, 1.5)])
        rec.log_evaluation("accuracy", 0.875, params={"checkpoint": "best", "n": 8})
        rec.log_evaluation("map@1000", 0.5, split="val")
        rec.add_checkpoint("best", ckpt, epoch=1, metric=0.625)
        rec.add_sweep([SweepPoint("pgd", "exact", 0.0, 4, 0.75, seconds=1.5, params={"steps": 10}, correct="1101"),
                       SweepPoint("pgd", "exact", 0.1, 4, 0.25, correct="0100")])
        rec.add_sanity([SanityCheck("falls_to_chance", True, 0.1, "ok", attack="pgd", mode="exact"),
                        SanityCheck("eps0", None)])
        rec.set_summary(best_epoch=1, nested={"a": 1})
        rec.set_summary(test_accuracy=0.875)
    rid = rec.run_id
    m = store.frame_metrics()
    got = {(r.split, r.name): (r.value, r.seconds) for r in m.itertuples()}
    assert got[("train", "loss")] == (1.25, 2.0) and got[("train", "accuracy")] == (0.5, 2.0)
    assert got[("val", "accuracy")][0] == 0.625
    assert all(m["rule"] == "usf") and m.loc[(m.split == "val") & (m.name == "loss"), "value"].isna().all()
    a = store.frame_alignment().set_index("layer")
    assert a.loc["conv1", ["angle_deg", "norm_ratio", "grad_angle_deg"]].tolist() == [12.5, 0.75, 30.0]
    assert a.loc["fc", "norm_ratio"] == 1.5 and a[["angle_deg", "grad_angle_deg"]].loc["fc"].isna().all()
    e = store.frame_evaluations()
    assert e.set_index("metric").loc["accuracy", "params"] == {"checkpoint": "best", "n": 8}
    assert e.set_index("metric").loc["map@1000", "split"] == "val"
    c = store.checkpoint(rid, "best")
    assert c.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest() and c.epoch == 1 and c.metric == 0.625
    with pytest.raises(CheckpointError, match="has no checkpoint 'last'"):
        store.checkpoint(rid, "last")
    s = store.frame_sweeps()
    assert s[["attack", "mode", "epsilon", "n", "robust", "correct"]].values.tolist() == [
        ["pgd", "exact", 0.0, 4, 0.75, "1101"], ["pgd", "exact", 0.1, 4, 0.25, "0100"]]
    assert s["params"].tolist() == [{"steps": 10}, {}] and s["seconds"].tolist() == [1.5, 0.0]
    q = store.frame_sanity()
    assert q["passed"].tolist() == [True, None] and q["attack"].iloc[0] == "pgd" and pd.isna(q["attack"].iloc[1])
    assert store.get_run(rid).summary == {"best_epoch": 1, "nested": {"a": 1}, "test_accuracy": 0.875}


def test_failed_run_records_error_and_reraises(store):
    with pytest.raises(ValueError, match="boom"):
        with store.run("finetune", config=Cfg()) as rec:
            rec.log_epoch(1, "val", {"accuracy": 0.1})
            raise ValueError("boom\nsecond line")
    run = store.get_run(rec.run_id)
    assert run.status == "failed" and run.error == "ValueError: boom"
    assert "Traceback" in run.traceback and "second line" in run.traceback
    assert run.finished_at is not None
    assert len(store.frame_metrics()) == 1  # what was logged before the crash stays


def test_keyboard_interrupt_marks_failed(store):
    with pytest.raises(KeyboardInterrupt):
        with store.run("attack", config=Cfg()) as rec:
            raise KeyboardInterrupt
    run = store.get_run(rec.run_id)
    assert run.status == "failed" and run.error == "KeyboardInterrupt"
    assert store.list_runs(status="running") == []


@pytest.mark.parametrize("bad", [
    SweepPoint("fgsm", "exact", 0.2, -1, 0.5),                # CHECK n >= 0
    SweepPoint("fgsm", "exact", 0.2, 3, 0.5, correct="10"),   # CHECK length(correct) = n
    SweepPoint("fgsm", "exact", None, 3, 0.5),                # NOT NULL epsilon
])
def test_add_sweep_is_atomic(store, bad):
    good = [SweepPoint("fgsm", "exact", e, 3, 0.5, correct="101") for e in (0.0, 0.1)]
    with pytest.raises(sa.exc.IntegrityError):
        with store.run("attack", config=Cfg()) as rec:
            rec.add_sweep([SweepPoint("fgsm", "feedback", 0.0, 3, 1.0, correct="111")])
            rec.add_sweep([*good, bad, *good])
    assert store.get_run(rec.run_id).status == "failed"
    s = store.frame_sweeps()
    assert s["mode"].tolist() == ["feedback"]  # the first sweep is whole, the broken one left nothing
    with store.run("attack", config=Cfg()) as rec2:
        rec2.add_sweep(good)
        rec2.add_sweep(good)
    assert store.frame_sweeps(status="finished")["sweep"].tolist() == [0, 0, 1, 1]


def test_frame_sweeps_carries_the_attacked_models_fields(store):
    target = _model_run(store, rule="frsf", seed=7, recipe="rec", tags=("paper",))
    with store.run("attack", config=Cfg(), seed=99, parent_id=target, rule="ignored-when-parent") as rec:
        rec.add_sweep([SweepPoint("fgsm", "feedback", 0.1, 2, 0.5, correct="10")])
    with store.run("attack", config=Cfg(), seed=5, rule="bp", model="mlp") as orphan:  # no parent: own fields
        orphan.add_sweep([SweepPoint("fgsm", "exact", 0.1, 2, 0.0, correct="00")])
    s = store.frame_sweeps()
    first = s.iloc[0]
    assert (first.rule, first.model, first.dataset, first.seed, first.task, first.recipe) == (
        "frsf", "lenet", "digits", 7, "classification", "rec")
    assert first.target_id == target and first.run_id == rec.run_id and first.attack_seed == 99
    assert first.tags == ["paper"] and first.target_kind == "finetune"
    assert s.iloc[1].rule == "bp" and s.iloc[1].model == "mlp" and pd.isna(s.iloc[1].target_id)
    assert store.frame_sweeps(rule="frsf")["run_id"].tolist() == [rec.run_id]
    assert store.frame_sweeps(tag="paper")["run_id"].tolist() == [rec.run_id]


def test_queries(store):
    a = _model_run(store, rule="fa", seed=0, tags=("x",))
    b = _model_run(store, rule="bp", seed=1)
    child = _model_run(store, rule="fa", seed=0, parent_id=b)
    with pytest.raises(RuntimeError):
        with store.run("finetune", config=Cfg(lr=0.01), rule="fa"):
            raise RuntimeError("x")
    assert [r.id for r in store.list_runs(rule="fa")] == [a, child, child + 1]
    assert [r.id for r in store.list_runs(rule="fa", status="finished")] == [a, child]
    assert [r.id for r in store.list_runs(tag="x")] == [a]
    assert [r.id for r in store.list_runs(limit=2)] == [child, child + 1]  # newest two, oldest first
    assert [r.id for r in store.children(b)] == [child]
    assert store.children(b, kind="attack") == []
    # the failed run has the same config as `a` and `child`; the newest finished one is found
    assert store.find_finished("finetune", config_hash(Cfg(lr=0.01))).id == child
    assert store.find_finished("pretrain", config_hash(Cfg(lr=0.01))) is None
    assert set(store.frame_runs()["id"]) == {a, b, child, child + 1}
    assert store.frame_runs(tag="x")["id"].tolist() == [a]
    for ref in (12345, "nope"):
        with pytest.raises(RunNotFoundError) as err:
            store.get_run(ref)
        assert "\n" not in str(err.value)


def test_upgrade_from_revision_0001_keeps_rows(tmp_path):
    """A database written by the first release (revision 0001) migrates on open and keeps its runs."""
    from alembic import command

    from ssbench.store.engine import alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.commit()
        conn.exec_driver_sql(
            "INSERT INTO runs (kind, status, tags, config, config_hash, versions, started_at, summary) "
            "VALUES ('pretrain', 'finished', '[]', '{}', 'h', '{}', '2026-01-01 00:00:00', '{}')")
        conn.commit()
    engine.dispose()
    store = open_store(url)
    run = store.get_run(1)
    assert run.kind == "pretrain" and run.status == "finished" and run.pid is None and run.heartbeat_at is None
    assert store.liveness(run) is None
    store.close()


def _killed_run(url: str) -> None:
    """A child process starts a run and is SIGKILLed inside it (no Python runs to mark it)."""
    import signal
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from pydantic import BaseModel\n"
        "from ssbench.store import open_store\n"
        "class C(BaseModel):\n    a: int = 1\n"
        f"s = open_store({url!r})\n"
        "with s.run('pretrain', config=C()) as rec:\n"
        "    rec.log_epoch(1, 'train', {'loss': 1.0})\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_killed_process_leaves_a_stale_run_that_fail_stale_marks(tmp_path):
    """SIGKILL runs no Python: the run stays 'running'. The store tells its process is gone."""
    import os

    url = f"sqlite:///{tmp_path / 'k.db'}"
    _killed_run(url)
    store = open_store(url)
    (run,) = store.list_runs()
    assert run.status == "running" and run.pid not in (None, os.getpid())
    assert run.heartbeat_at is not None and run.heartbeat_at >= run.started_at  # log_epoch touched it
    assert store.liveness(run) == "gone"
    # a live run of this very process is not touched; a run of another host is 'unknown'
    with store.run("pretrain", config=Cfg()) as rec:
        me = store.get_run(rec.run_id)
        assert store.liveness(me) == "alive"
        assert store.fail_stale() == [run.id]
        assert store.get_run(rec.run_id).status == "running"
    after = store.get_run(run.id)
    assert after.status == "failed" and after.error.startswith("StaleRun: process")
    assert store.fail_stale() == []
    other = store.get_run(run.id)
    other.status, other.host = "running", "elsewhere.example"
    assert store.liveness(other) == "unknown"
    store.close()


def test_git_commit_is_the_source_checkout_not_the_working_directory(tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    import ssbench
    from ssbench.store.store import git_commit

    root = Path(ssbench.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("ssbench is not running from a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)  # a user's own (empty) repository as working directory
    commit = git_commit()
    assert commit is not None and commit.split("-")[0] == head


def test_cli_runs_shows_gone_runs_and_fail_stale_marks_them(tmp_path):
    from typer.testing import CliRunner

    from ssbench.cli import app

    url = f"sqlite:///{tmp_path / 'c.db'}"
    _killed_run(url)
    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(app, ["runs", "--db", url])
    assert r.exit_code == 0 and "running (gone)" in r.output, r.output
    r = runner.invoke(app, ["runs", "--db", url, "--fail-stale"])
    assert r.exit_code == 0 and "marked 1 stale run(s) failed: 1" in r.output, r.output
    assert "running (gone)" not in r.output and "StaleRun" in r.output
    assert open_store(url).get_run(1).status == "failed"
