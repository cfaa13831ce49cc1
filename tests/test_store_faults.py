"""Every fault leaves the store true: read-only stores read, refused writes are one line and leave
a failed run (never a half-written one), full disks, stores from a newer ssbench, stale temporaries.

Real SQLite files, real tmpfs mounts (root only: skipped with the reason elsewhere) and real
`ssbench` subprocesses where what the user sees is the point."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssbench.store import open_store
from ssbench.store.engine import head_revision
from ssbench.store.temporaries import is_stale, remove_stale, temporary_for, write_atomic

SSBENCH = Path(sys.executable).parent / "ssbench"
PRETRAIN = ["pretrain", "-d", "digits", "--classes", "0-4", "-m", "mlp", "--hidden", "16", "-e", "1", "-b", "64", "-q"]


def ssbench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(SSBENCH)] if SSBENCH.exists() else [sys.executable, "-c", "from ssbench.cli import main; main()"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr  # one line, no traceback
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    return lines[0]


def db_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'results.db'}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sql(path: Path, query: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder (results.db + checkpoints/1/) holding one finished pretrain run, made by the CLI."""
    folder = tmp_path_factory.mktemp("base")
    proc = ssbench(*PRETRAIN, "--db", db_url(folder))
    assert proc.returncode == 0, proc.stderr
    return folder


def copy_results(base: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base / "results.db", dst / "results.db")
    shutil.copytree(base / "checkpoints", dst / "checkpoints")
    return dst


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 3 MB tmpfs (root only), unmounted after the test."""
    point = tmp_path / "mnt"
    point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(point)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip() or proc.returncode}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of `folder` to the last byte, then free `leave` bytes of it."""
    filler = folder / "filler"
    with open(filler, "ab", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- 1. read-only stores --------------------------------------------------------------------------

def assert_reads_and_refuses_writes(folder: Path, tmp_path: Path, why: str) -> None:
    db = folder / "results.db"
    before = sha256(db)
    listing = ssbench("runs", "--db", db_url(folder))
    assert listing.returncode == 0, listing.stderr
    assert "pretrain" in listing.stdout and "finished" in listing.stdout
    show = ssbench("show", "1", "--db", db_url(folder))
    assert show.returncode == 0 and "run 1" in show.stdout, show.stderr
    report = ssbench("report", "--format", "markdown", "--out", str(tmp_path / "report"), "--db", db_url(folder))
    assert report.returncode == 0, report.stderr
    assert any((tmp_path / "report").iterdir())
    write = ssbench(*PRETRAIN, "--db", db_url(folder))
    line = one_error_line(write)
    assert "read-only" in line and str(db) in line and why in line, line
    assert sha256(db) == before  # nothing written, not even a 'running' row


def test_read_only_mount_reads_and_refuses_writes(base: Path, tmpfs: Path, tmp_path: Path) -> None:
    copy_results(base, tmpfs)
    remount_read_only(tmpfs)
    assert_reads_and_refuses_writes(tmpfs, tmp_path, "mounted read-only")


@pytest.mark.parametrize("target", ["file", "folder"])
def test_immutable_file_or_folder_reads_and_refuses_writes(base: Path, tmp_path: Path, target: str) -> None:
    folder = copy_results(base, tmp_path / "store")
    locked = folder / "results.db" if target == "file" else folder
    proc = subprocess.run(["chattr", "+i", str(locked)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"chattr +i does not work here (needs root and ext4/xfs/btrfs): {proc.stderr.strip()}")
    try:
        assert_reads_and_refuses_writes(folder, tmp_path, "not writable")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes: the tmpfs and chattr tests cover root")
def test_read_only_modes_read_and_refuse_writes(base: Path, tmp_path: Path) -> None:
    folder = copy_results(base, tmp_path / "store")
    (folder / "results.db").chmod(0o444)
    folder.chmod(0o555)
    try:
        assert_reads_and_refuses_writes(folder, tmp_path, "not writable")
    finally:
        folder.chmod(0o755)


def test_read_only_store_of_an_older_schema(base: Path, tmpfs: Path) -> None:
    """Not migrated when read-only: read as it is when it has every column, else one line says why."""
    copy_results(base, tmpfs)
    db = tmpfs / "results.db"
    sql_exec(db, "UPDATE alembic_version SET version_num = '0002'")  # older stamp, same tables: readable
    remount_read_only(tmpfs)
    store = open_store(db_url(tmpfs))
    assert [r.id for r in store.list_runs()] == [1]
    store.close()
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    sql_exec(db, "DROP TABLE job_claims" if "job_claims" in tables(db) else "ALTER TABLE runs DROP COLUMN heartbeat_at")
    remount_read_only(tmpfs)
    line = one_error_line(ssbench("runs", "--db", db_url(tmpfs)))
    assert "read-only" in line and "revision 0002" in line and f"migrated to {head_revision()}" in line, line


def sql_exec(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    return {name for (name,) in sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- 2. a store from a newer ssbench --------------------------------------------------------------

def test_store_of_a_newer_ssbench_is_one_line(base: Path, tmp_path: Path) -> None:
    folder = copy_results(base, tmp_path / "store")
    sql_exec(folder / "results.db", "UPDATE alembic_version SET version_num = 'ffffffffffff'")
    before = sha256(folder / "results.db")
    for args in (["runs"], PRETRAIN):
        line = one_error_line(ssbench(*args, "--db", db_url(folder)))
        assert (f"was written by a newer ssbench (schema revision ffffffffffff, this ssbench knows up to "
                f"{head_revision()}); upgrade ssbench") in line, line
    assert sha256(folder / "results.db") == before


# -- 3. full disks ---------------------------------------------------------------------------------

def no_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def test_disk_full_during_a_checkpoint_write(tmpfs: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    fill(tmpfs, leave=40 * 1024)  # a few KB: the 70 KB checkpoints of a 256-unit MLP do not fit
    proc = ssbench("pretrain", "-d", "digits", "--classes", "0-4", "-m", "mlp", "--hidden", "256", "-e", "1",
                   "-b", "64", "-q", "--db", db_url(store), "--artifacts", str(tmpfs))
    line = one_error_line(proc)
    assert f"no space left on {tmpfs} while writing checkpoint {tmpfs}/checkpoints/1/" in line, line
    assert no_temporaries(tmpfs) == []  # the partial temporary is gone
    status, error = sql(store / "results.db", "SELECT status, error FROM runs WHERE id = 1")[0]
    assert status == "failed" and "no space left on" in error
    assert sql(store / "results.db", "PRAGMA integrity_check") == [("ok",)]


# the attack's run row is written, then the disk fills: its sweep points cannot be
FILL_AFTER_START = r"""
import os, sys
from ssbench.store import store as st
folder = sys.argv.pop(1)
enter = st.RunContext.__enter__
def entered(self):
    rec = enter(self)
    with open(os.path.join(folder, "filler"), "ab", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return rec
st.RunContext.__enter__ = entered
sys.argv[0] = "ssbench"
from ssbench.cli import main
main()
"""


def test_disk_full_during_an_attacks_database_writes(base: Path, tmpfs: Path) -> None:
    copy_results(base, tmpfs)
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FILL_AFTER_START, str(tmpfs), "attack", "1", "--attack", "fgsm",
                           "--mode", "exact", "--eps", "0,0.1", "--n", "100", "--db", db_url(tmpfs)],
                          capture_output=True, text=True, timeout=300, env=env)
    line = one_error_line(proc)
    assert f"no space left on {tmpfs} while writing" in line and "results store" in line, line
    free = os.statvfs(tmpfs)
    assert free.f_bavail * free.f_frsize < 64 * 1024  # almost full: reads need no space
    listing = ssbench("runs", "--db", db_url(tmpfs))
    assert listing.returncode == 0, listing.stderr
    assert "attack" in listing.stdout
    (tmpfs / "filler").unlink()
    db = tmpfs / "results.db"
    assert sql(db, "PRAGMA integrity_check") == [("ok",)]
    status, error = sql(db, "SELECT status, error FROM runs WHERE kind = 'attack'")[0]
    assert status == "failed" and "no space left on" in error
    assert sql(db, "SELECT count(*) FROM sweep_points") == [(0,)]


def test_a_full_disk_still_lists_runs_and_refuses_writes_in_one_line(base: Path, tmpfs: Path) -> None:
    copy_results(base, tmpfs)
    fill(tmpfs)
    before = sha256(tmpfs / "results.db")
    listing = ssbench("runs", "--db", db_url(tmpfs))
    assert listing.returncode == 0 and "pretrain" in listing.stdout, listing.stderr
    line = one_error_line(ssbench(*PRETRAIN, "--db", db_url(tmpfs)))
    assert f"no space left on {tmpfs}" in line and "cannot be written" in line, line
    assert sha256(tmpfs / "results.db") == before


# -- 4. stale temporaries ----------------------------------------------------------------------------

def test_temporaries_are_named_after_their_writer(tmp_path: Path) -> None:
    tmp = temporary_for(tmp_path / "best.pt")
    assert tmp.name.startswith("best.pt.") and tmp.name.endswith(f".{os.getpid()}.tmp")
    tmp.write_bytes(b"x")
    assert not is_stale(tmp)  # this process is alive


def test_a_killed_write_leaves_a_stale_temporary_that_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "best.pt"
    code = ("import os, signal, sys; from pathlib import Path; from ssbench.store.temporaries import write_atomic\n"
            "def write(f):\n    f.write(b'half a checkpoint'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "write_atomic(Path(sys.argv[1]), write, 'checkpoint')")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (left,) = target.parent.glob("*.tmp")
    assert not target.exists() and is_stale(left)
    assert remove_stale(target.parent) == [left] and not left.exists()


def test_a_failed_write_removes_its_temporary_and_says_why(tmp_path: Path) -> None:
    def broken(f) -> None:  # noqa: ANN001
        f.write(b"partial")
        raise ValueError("not serialisable")

    with pytest.raises(ValueError):
        write_atomic(tmp_path / "best.pt", broken, "checkpoint")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def plant_temporaries(folder: Path, live: int) -> tuple[Path, Path, Path, Path]:
    """A dead writer's, a live writer's, an old unnamed (an older ssbench's) and a fresh unnamed temporary."""
    folder.mkdir(parents=True, exist_ok=True)
    host = temporary_for(folder / "x").name.split(".")[-3]
    dead = folder / f"last.pt.{host}.{dead_pid()}.tmp"
    alive = folder / f"best.pt.{host}.{live}.tmp"
    old, fresh = folder / "resume.pt.tmp", folder / "split.json.tmp"
    for p in (dead, alive, old, fresh):
        p.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    return dead, alive, old, fresh


def test_a_rerun_of_the_job_removes_its_stale_temporaries(tmp_path: Path, live_pid: int) -> None:
    from ssbench.specs import TrainSpec

    store = open_store(db_url(tmp_path), artifacts=tmp_path)
    spec = TrainSpec()
    with pytest.raises(RuntimeError), store.run("pretrain", config=spec):
        raise RuntimeError("killed")  # stands in for the SIGKILL above: only the folder matters here
    dead, alive, old, fresh = plant_temporaries(store.checkpoint_dir(1), live_pid)
    other = plant_temporaries(store.checkpoint_dir(99), live_pid)[0]  # not this job's folder
    with store.run("pretrain", config=spec):
        pass
    assert not dead.exists() and not old.exists()
    assert alive.exists() and fresh.exists() and other.exists()
    store.close()


def test_fail_stale_removes_stale_temporaries(base: Path, tmp_path: Path, live_pid: int) -> None:
    folder = copy_results(base, tmp_path / "store")
    dead, alive, old, fresh = plant_temporaries(folder / "checkpoints" / "1", live_pid)
    deeper = plant_temporaries(folder / "checkpoints" / "7" / "epochs", live_pid)[0]
    proc = ssbench("runs", "--fail-stale", "--db", db_url(folder))
    assert proc.returncode == 0, proc.stderr
    assert not dead.exists() and not old.exists() and not deeper.exists()
    assert alive.exists() and fresh.exists()


# -- refused before it starts: nothing in the store --------------------------------------------------

def test_a_command_refused_before_it_starts_writes_no_run(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = ssbench("pretrain", "-d", "mnist", "--data-dir", str(empty), "--no-download", "--db", db_url(tmp_path))
    one_error_line(proc)
    assert sql(tmp_path / "results.db", "SELECT count(*) FROM runs") == [(0,)]
