"""The store on both back ends (SQLite file, a real PostgreSQL server): several processes at once,
migration races, fork safety, and one-line errors for every way of failing to open a store."""
from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import traceback
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from ssbench.errors import StoreError
from ssbench.store import SweepPoint, open_store
from ssbench.store.engine import head_revision, make_engine, migrate, mount_fstype

PROCS = 4
RUNS_PER_PROC = 3


class Job(BaseModel):
    worker: int
    i: int


# -- workers (module level: multiprocessing 'spawn' imports them by name) --------------------------

def _report(queue: Any, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
        queue.put(("ok", ""))
    except BaseException:  # noqa: BLE001 -- the parent asserts on every child's outcome
        queue.put(("error", traceback.format_exc()))


def _open_at_once(url: str, barrier: Any) -> None:
    barrier.wait(timeout=120)
    open_store(url).close()


def _write_runs(url: str, barrier: Any, worker: int) -> None:
    store = open_store(url)
    barrier.wait(timeout=120)
    for i in range(RUNS_PER_PROC):
        with store.run("attack", config=Job(worker=worker, i=i), seed=worker, tags=(f"w{worker}",)) as rec:
            rec.log_epoch(1, "val", {"accuracy": 0.5, "loss": 1.0})
            rec.add_sweep([SweepPoint("fgsm", "exact", e, 2, 0.5, correct="10") for e in (0.0, 0.1, 0.2)])
            rec.add_sweep([SweepPoint("pgd", "feedback", 0.1, 2, 1.0, correct="11")])
    store.close()


def _in_processes(target: Any, args_of: Any) -> None:
    """Runs `target(*args_of(barrier, k))` in PROCS spawned processes released together; every one
    must succeed."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(PROCS), ctx.Queue()
    procs = [ctx.Process(target=_report, args=(queue, target, *args_of(barrier, k))) for k in range(PROCS)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [detail for status, detail in outcomes if status != "ok"]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0] * PROCS


# -- several processes ------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_processes_opening_a_fresh_store_at_once_migrate_it_once(store_url):
    _in_processes(_open_at_once, lambda barrier, _k: (store_url, barrier))
    engine = make_engine(store_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [head_revision()]
    assert {"runs", "sweep_points", "metrics"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


@pytest.mark.timeout(300)
def test_concurrent_writers_lose_nothing(store_url):
    open_store(store_url).close()  # migrated up front: this test is about writers, not the race above
    _in_processes(_write_runs, lambda barrier, k: (store_url, barrier, k))
    store = open_store(store_url)
    runs = store.frame_runs()
    assert len(runs) == PROCS * RUNS_PER_PROC and set(runs["status"]) == {"finished"}
    assert sorted(zip(runs["seed"], runs["config"].map(lambda c: c["i"]))) == [
        (w, i) for w in range(PROCS) for i in range(RUNS_PER_PROC)]
    sweeps = store.frame_sweeps()
    assert len(sweeps) == PROCS * RUNS_PER_PROC * 4
    per_run = sweeps.groupby("run_id")["sweep"].apply(lambda s: sorted(s.tolist()))
    assert all(v == [0, 0, 0, 1] for v in per_run)  # each run's sweeps numbered in order, none lost
    assert len(store.frame_metrics()) == PROCS * RUNS_PER_PROC * 2
    store.close()


def _raw_connection(store: Any) -> Any:
    with store.engine.connect() as conn:
        return conn.connection.dbapi_connection


def test_forked_child_gets_its_own_connections(store_url):
    """A child forked while the parent holds pooled connections must not use them (SQLAlchemy's fork
    guidance): the child connects anew, both keep working, and the parent sees the child's run."""
    store = open_store(store_url)
    with store.run("pretrain", config=Job(worker=0, i=0)):
        pass
    parents = _raw_connection(store)  # pooled, checked in: what a careless child would reuse
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            with store.run("pretrain", config=Job(worker=1, i=0)):
                pass
            code = 3 if _raw_connection(store) is parents else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child used the parent's pooled connection"
    assert _raw_connection(store) is parents
    assert [r.config["worker"] for r in store.list_runs()] == [0, 1]
    store.close()


# -- one-line errors -----------------------------------------------------------------------------------

def _assert_one_line(err: pytest.ExceptionInfo[StoreError], *secrets: str) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message and message
    for secret in secrets:
        assert secret not in message, message
    return message


@pytest.mark.parametrize("url", [
    "not a database url",
    "postgresql+psycopg://me:s3cret@localhost:notaport/db",
])
def test_bad_url_is_one_line(url):
    with pytest.raises(StoreError) as err:
        open_store(url)
    assert "not a database URL" in _assert_one_line(err, "s3cret")


def test_unknown_driver_is_one_line():
    with pytest.raises(StoreError) as err:
        open_store("postgresql+nosuchdriver://me:s3cret@127.0.0.1/db")
    message = _assert_one_line(err, "s3cret")
    assert "postgresql+nosuchdriver" in message and "pip install 'ssbench[scale]'" in message


@pytest.mark.skipif(importlib.util.find_spec("pymysql") is not None, reason="pymysql is installed here")
def test_missing_driver_module_names_the_package():
    with pytest.raises(StoreError) as err:
        open_store("mysql+pymysql://me:s3cret@127.0.0.1/db")
    assert "pip install pymysql" in _assert_one_line(err, "s3cret")


def test_unreachable_server_is_one_line():
    from pgserver import free_port

    port = free_port()  # nothing listens there once the probe socket is closed
    with pytest.raises(StoreError) as err:
        open_store(f"postgresql+psycopg://me:s3cret@127.0.0.1:{port}/db?connect_timeout=5")
    message = _assert_one_line(err, "s3cret")
    assert f"127.0.0.1:{port}" in message and "***" in message


def test_wrong_password_is_one_line(pg_server):
    url = pg_server.create_database()
    bad = url.replace(pg_server.password, "wrong-s3cret")
    with pytest.raises(StoreError) as err:
        open_store(bad)
    message = _assert_one_line(err, "wrong-s3cret", pg_server.password)
    assert "password authentication failed" in message


def test_cli_wrong_password_exits_2_with_one_line(pg_server):
    from typer.testing import CliRunner

    from ssbench.cli import app

    url = pg_server.create_database()
    bad = url.replace(pg_server.password, "wrong-s3cret")
    result = CliRunner().invoke(app, ["runs", "--db", bad])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "password authentication failed" in lines[0]
    assert "wrong-s3cret" not in result.output and pg_server.password not in result.output


def test_unopenable_sqlite_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(StoreError) as err:
        open_store(f"sqlite:///{tmp_path / 'afile' / 'results.db'}")
    _assert_one_line(err)


def test_migrate_reports_connection_failure_as_store_error(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}")  # a folder, not a database file
    with pytest.raises(StoreError) as err:
        migrate(engine)
    assert "unable to open database file" in _assert_one_line(err)


def test_store_from_a_newer_ssbench_is_one_line(store_url):
    open_store(store_url).close()
    engine = make_engine(store_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    with pytest.raises(StoreError) as err:
        open_store(store_url)
    assert "9999_from_the_future" in _assert_one_line(err)


# -- SQLite on network file systems ------------------------------------------------------------------

MOUNTS = """\
sysfs /sys sysfs rw,nosuid 0 0
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/lab nfs4 rw,vers=4.2 0 0
/dev/sdb1 /mnt/lab/local ext4 rw 0 0
//nas/share /mnt/My\\040Share cifs rw 0 0
tmpfs /mnt/labx tmpfs rw 0 0
sshfs#me@host: /home/me/remote fuse.sshfs rw 0 0
"""


@pytest.mark.parametrize(("path", "fstype"), [
    ("/home/me/results.db", "ext4"),
    ("/mnt/lab", "nfs4"),
    ("/mnt/lab/ssbench/results.db", "nfs4"),
    ("/mnt/lab/local/results.db", "ext4"),       # a local disk mounted inside the NFS share
    ("/mnt/labx/results.db", "tmpfs"),           # a prefix of the name is not a parent folder
    ("/mnt/My Share/results.db", "cifs"),        # \040 is a space
    ("/home/me/remote/x/results.db", "fuse.sshfs"),
])
def test_mount_fstype_finds_the_longest_mount_point(path, fstype):
    assert mount_fstype(path, MOUNTS) == fstype


def test_mount_fstype_later_line_wins_on_an_overmount():
    table = "/dev/sda1 / ext4 rw 0 0\nsrv:/a /data ext4 rw 0 0\nsrv:/b /data nfs rw 0 0\n"
    assert mount_fstype("/data/x.db", table) == "nfs"
    assert mount_fstype("/x.db", "") is None


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "fuse.sshfs", "9p"])
def test_sqlite_on_a_network_file_system_is_refused(tmp_path, monkeypatch, fstype):
    import ssbench.store.engine as engine_mod

    table = f"/dev/sda1 / ext4 rw 0 0\nsrv:/export {tmp_path.resolve()} {fstype} rw 0 0\n"
    monkeypatch.setattr(engine_mod, "_mounts_table", lambda: table)
    with pytest.raises(StoreError) as err:
        open_store(f"sqlite:///{tmp_path / 'db' / 'results.db'}")
    message = _assert_one_line(err)
    assert fstype in message and "WAL" in message and "SSBENCH_DB=postgresql+psycopg://" in message


def test_sqlite_on_the_local_tmp_path_opens(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'local' / 'results.db'}")
    assert store.list_runs() == []
    store.close()
