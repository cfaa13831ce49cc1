"""A throw-away PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, on a free
127.0.0.1 port, password-checked (scram-sha-256), stopped at the end of the test session.

Three nets make sure no server outlives the run: the fixture's teardown, atexit, and a watchdog
process that stops the server when the test process dies without running either (SIGKILL,
pytest-timeout's os._exit)."""
from __future__ import annotations

import atexit
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

USER = "ssbench"
HOST = "127.0.0.1"

_WATCHDOG = """
import json, shutil, subprocess, sys
stop, root = json.loads(sys.argv[1])
sys.stdin.read()  # EOF: the test process has ended, however it ended
subprocess.run(stop, capture_output=True)
shutil.rmtree(root, ignore_errors=True)
"""


def find_bindir() -> Path | None:
    """Debian's /usr/lib/postgresql/<version>/bin (newest version), else the initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: _version(Path(p)))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _version(initdb: Path) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in initdb.parent.parent.name.split("."))
    except ValueError:
        return (0,)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class PgServer:
    """One running server. `create_database()` gives a fresh, empty database and its URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.host, self.user = HOST, USER
        self.password = "pw-" + secrets.token_hex(8)
        self._as = _run_as_prefix()
        # as root, TMPDIR may be a folder the postgres user cannot enter
        self.root = Path(tempfile.mkdtemp(prefix="ssbench-pg-", dir="/tmp" if self._as else None))
        self.data = self.root / "data"
        self.port = 0
        self._count = 0
        self._watchdog: subprocess.Popen[bytes] | None = None
        if self._as:  # PostgreSQL refuses to run as root: hand the folder to the postgres user
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    # lifecycle
    def start(self) -> PgServer:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> PgServer:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._give(pwfile)
        self._pg("initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                 "-E", "UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()
        atexit.register(self.stop)
        self._start_watchdog()
        for attempt in range(3):  # the port may be taken between free_port() and the server's bind
            self.port = free_port()
            if self._pg_ctl_start(check=attempt == 2):
                return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.data.exists():
            self._pg("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data), check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # type: ignore[union-attr]
            self._watchdog.wait(timeout=30)
            self._watchdog = None

    # databases
    def url(self, dbname: str, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg://{self.user}:{pw}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its postgresql+psycopg:// URL."""
        import psycopg

        self._count += 1
        name = name or f"t{self._count}_{secrets.token_hex(3)}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # helpers
    def _pg_ctl_start(self, check: bool) -> bool:
        opts = (f"-c listen_addresses={HOST} -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        proc = self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.root / "log"),
                        "-o", opts, check=False)
        if proc.returncode == 0:
            return True
        if check:
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\n{log[-2000:]}")
        return False

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self._as, str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=120, cwd=self.root)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def _give(self, path: Path) -> None:
        if self._as:
            owner = pwd.getpwnam("postgres")
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _start_watchdog(self) -> None:
        stop = [*self._as, str(self.bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data)]
        # own session: a Ctrl-C to the test's process group must not take the watchdog down first
        self._watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, json.dumps([stop, str(self.root)])],
                                          stdin=subprocess.PIPE, start_new_session=True)


def _run_as_prefix() -> list[str]:
    """`runuser -u postgres --` when we are root (PostgreSQL refuses to run as root), else nothing."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL as "
                           "(apt-get install postgresql creates it)") from None
    return ["runuser", "-u", "postgres", "--"]
