"""Engine construction (SQLite pragmas, one-line open errors) and migrations on open."""
from __future__ import annotations

import os
import re
import sqlite3
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, quote_plus

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from ssbench.errors import StoreError
from ssbench.store.faults import mount_point, refused_store_write

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
# space a WAL connection needs to open: its -shm (32 KiB) and the first frames of its -wal
WAL_OPEN_BYTES = 64 * 1024
# pg_advisory_lock key that serialises `alembic upgrade` across processes: "SSBENCH1" in ASCII
MIGRATION_LOCK_KEY = 0x5353_4245_4E43_4831
# File systems where SQLite's WAL (shared memory + POSIX locks) is not safe: several hosts corrupt it.
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "ceph", "fuse.ceph", "fuse.cephfs", "glusterfs",
    "fuse.glusterfs", "lustre", "gpfs", "beegfs", "fuse.sshfs", "sshfs", "9p", "afs", "davfs", "fuse.davfs2",
    "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.juicefs",
})
# pip package that provides each DBAPI module SQLAlchemy may import
DRIVER_PACKAGES = {
    "psycopg": "'ssbench[scale]' (or psycopg[binary])",
    "psycopg2": "psycopg2-binary (or use postgresql+psycopg://... after pip install 'ssbench[scale]')",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
    "mysql": "mysql-connector-python",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}

# engines made here, disposed in a forked child so that parent and child never share a connection
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
# engines opened read-only, and why (a read-only mount, an unwritable file or folder)
_READ_ONLY: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def _dispose_after_fork() -> None:
    # SQLAlchemy's fork guidance: the child drops the inherited pool without closing the parent's sockets
    for engine in list(_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)


def default_home() -> Path:
    return Path(os.environ.get("SSBENCH_HOME") or "ssbench-results")


def resolve_url(url: str | None) -> str:
    """Explicit url, else SSBENCH_DB, else sqlite:///<SSBENCH_HOME or ./ssbench-results>/results.db."""
    if url:
        return url
    if os.environ.get("SSBENCH_DB"):
        return os.environ["SSBENCH_DB"]
    return f"sqlite:///{(default_home() / 'results.db').as_posix()}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other back ends and in-memory SQLite."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:") or u.database.startswith("file:"):
        return None
    return Path(u.database)


# -- one-line errors ----------------------------------------------------------------------------

def _redact_raw(url: str) -> str:
    """A URL string SQLAlchemy could not parse, with anything between 'user:' and '@' hidden."""
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", url)


def _shown(url: str | URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _redact_raw(str(url))


def _one_line(message: str, password: str | None) -> str:
    """First non-empty line of a driver message, whitespace collapsed, the password scrubbed."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    line = " ".join(lines[0].split()) if lines else ""
    if password:
        for form in {password, quote(password, safe=""), quote_plus(password)}:
            line = line.replace(form, "***")
    return line


def _driver_message(err: BaseException, password: str | None) -> str:
    orig = getattr(err, "orig", None) if isinstance(err, DBAPIError) else None
    source = orig if orig is not None else err
    return _one_line(str(source), password) or type(source).__name__


def _store_error(url: URL, what: str, err: BaseException) -> StoreError:
    return StoreError(f"cannot open results store {_shown(url)}: {what}{_driver_message(err, url.password)}")


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as err:
        raise StoreError(
            f"not a database URL: {_redact_raw(url)!r} ({_one_line(str(err), None)}); expected e.g. "
            "sqlite:///path/results.db or postgresql+psycopg://user:password@host:5432/dbname") from None


def _missing_driver(u: URL, err: BaseException) -> StoreError:
    if isinstance(err, ModuleNotFoundError) and err.name:
        module = err.name.split(".")[0]
        package = DRIVER_PACKAGES.get(module, module)
        return StoreError(f"cannot open results store {_shown(u)}: its driver module {module!r} is not "
                          f"installed; pip install {package}")
    return StoreError(f"cannot open results store {_shown(u)}: SQLAlchemy has no dialect/driver "
                      f"{u.drivername!r}; for PostgreSQL use postgresql+psycopg://... (pip install 'ssbench[scale]')")


# -- the file system under a SQLite file ---------------------------------------------------------

def _unescape_mount_field(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as \040, \011, \012, \134
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_fstype(path: str | Path, mounts: str) -> str | None:
    """The file system type of the mount holding `path` (absolute, resolved) in a /proc/self/mounts
    table: the longest mount point that is `path` or one of its parents; the later line of an
    over-mounted point wins. None when no line matches."""
    target = Path(path).as_posix()
    best: tuple[int, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape_mount_field(fields[1]), fields[2]
        inside = point == "/" or target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return None if best is None else best[1]


def _mounts_table() -> str | None:
    """This process's mount table; None where there is no /proc (not Linux: nothing to tell from)."""
    try:
        return Path("/proc/self/mounts").read_text(errors="replace")
    except OSError:
        return None


def _refuse_network_fs(path: Path) -> None:
    mounts = _mounts_table()
    if mounts is None:
        return
    fstype = mount_fstype(path.parent.resolve(), mounts)
    if fstype is not None and fstype.lower() in NETWORK_FILE_SYSTEMS:
        raise StoreError(
            f"SQLite results file {path} is on a network file system ({fstype}), where SQLite's WAL is not "
            "safe; use PostgreSQL (SSBENCH_DB=postgresql+psycopg://user:password@host/dbname) or point "
            "SSBENCH_HOME at a local disk")


# -- engines -------------------------------------------------------------------------------------

def _server_engine(u: URL) -> Engine:
    try:
        return create_engine(u, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        raise _missing_driver(u, err) from None
    except (ArgumentError, TypeError, ValueError) as err:  # bad query arguments and the like
        raise _store_error(u, "", err) from None


def _read_only(path: Path) -> tuple[str, bool] | None:
    """Why an existing SQLite file can only be read (None: it can be written, or is still to be
    created), and whether SQLite must open it `immutable`: the -shm file a WAL reader needs cannot
    be created (a read-only folder, a full disk) and the -wal holds nothing the main file lacks.
    immutable reads the main file with no locking, which is safe here: with an empty -wal the main
    file is the whole database, and no writer can add to the -wal without that folder or space."""
    if not path.is_file():
        return None
    folder = path.parent
    stat = os.statvfs(folder)
    mounted_ro = bool(stat.f_flag & os.ST_RDONLY)
    folder_writable = not mounted_ro and os.access(folder, os.W_OK | os.X_OK)
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0  # committed pages not yet in the main file
    if mounted_ro:
        reason = f"{mount_point(folder)} is mounted read-only"
    elif not os.access(path, os.W_OK):
        reason = f"{path} is not writable"
    elif not folder_writable:
        reason = f"its folder {folder} is not writable"
    elif not pending and stat.f_bavail * stat.f_frsize < WAL_OPEN_BYTES:
        return f"no space left on {mount_point(folder)}", True  # reads need no space: list, show, report
    else:
        return None
    return reason, not folder_writable and not pending


def _read_only_engine(url: str, path: Path, immutable: bool) -> Engine:
    uri = f"file:{quote(str(path.absolute()))}?mode=ro" + ("&immutable=1" if immutable else "")

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)

    return create_engine(url, creator=connect)


def _sqlite_engine(url: str) -> Engine:
    path = sqlite_file(url)
    read_only = _read_only(path) if path is not None else None
    if path is not None:
        if read_only is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create the folder of results file {path}: {err.strerror or err}") from None
        _refuse_network_fs(path)
        if read_only is not None:  # reads (runs, show, report) work; a write is a one-line StorageError
            engine = _read_only_engine(url, path, immutable=read_only[1])
            _READ_ONLY[engine] = read_only[0]
        else:
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    else:  # in-memory: one shared connection, or every session would see an empty database
        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    on_file = path is not None and read_only is None

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
        # pysqlite's own BEGIN handling is off; we emit BEGIN IMMEDIATE ourselves (below) so that
        # DDL is transactional and a read-then-write transaction never dies with "database is locked".
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if on_file:
            cur.execute("PRAGMA journal_mode=WAL")  # readers (a report) never block the writer (a job)
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # noqa: ANN001
        # also serialises migrations: the first open takes the write lock before reading alembic_version.
        # A read-only store takes no write lock: it could not write, and has nothing to serialise.
        conn.exec_driver_sql("BEGIN" if read_only is not None else "BEGIN IMMEDIATE")

    return engine


def _translate_refused_writes(engine: Engine) -> None:
    """A write the database refuses (disk full, read-only, permission) becomes a one-line
    StorageError wherever it happens (runs, sweeps, claims), instead of a driver traceback."""
    db_file = sqlite_file(engine.url.render_as_string(hide_password=False))
    shown = str(db_file) if db_file is not None else _shown(engine.url)

    @event.listens_for(engine, "handle_error")
    def _refused(ctx) -> None:  # noqa: ANN001
        err = refused_store_write(ctx.original_exception, ctx.statement, shown, db_file, _READ_ONLY.get(engine))
        if err is not None:
            raise err


def read_only_reason(engine: Engine) -> str | None:
    """Why `engine` was opened read-only; None when it can write."""
    return _READ_ONLY.get(engine)


def make_engine(url: str) -> Engine:
    """An engine for `url`; a bad URL, a missing driver or an unsafe SQLite location is a StoreError.
    Nothing connects yet (`migrate` does, and turns connection failures into StoreError too)."""
    u = _parse(url)
    try:
        backend = u.get_backend_name()
        engine = _sqlite_engine(url) if backend == "sqlite" else _server_engine(u)
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        raise _missing_driver(u, err) from None
    if not isinstance(engine.pool, StaticPool):  # an in-memory database lives in its one connection
        _ENGINES.add(engine)
    _translate_refused_writes(engine)
    return engine


def alembic_config(connection=None):  # noqa: ANN001, ANN201
    """An alembic Config built in code: works from any cwd and from an installed package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _connect(engine: Engine) -> Connection:
    """The first connection: unreachable server, refused credentials, unopenable file -> StoreError."""
    try:
        return engine.connect()
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        raise _missing_driver(engine.url, err) from None
    except Exception as err:  # noqa: BLE001 -- any failure to connect is a failure to open the store
        raise _store_error(engine.url, "", err) from None


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, one process at a time migrates: a session-level advisory lock on this connection
    (SQLite needs none: BEGIN IMMEDIATE already makes the first open's transaction exclusive)."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    conn.commit()  # the lock is the session's, not the transaction's: alembic runs its own
    try:
        yield
    finally:
        _unlock(conn)


def _unlock(conn: Connection) -> None:
    try:
        conn.rollback()  # a failed migration leaves an aborted transaction behind
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        conn.commit()
    except Exception:  # noqa: BLE001
        # a pooled connection must never keep the lock: drop it (the server then releases the lock)
        conn.invalidate()


def _refuse_newer(conn: Connection, url: URL) -> tuple[str, ...]:
    """The store's schema revisions; a StoreError when one is not a revision this ssbench knows,
    i.e. a newer ssbench wrote the store (upgrading it here would fail, reading it could mislead)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    current = tuple(MigrationContext.configure(conn).get_current_heads())
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        raise StoreError(f"results store {_shown(url)} was written by a newer ssbench (schema revision "
                         f"{', '.join(unknown)}, this ssbench knows up to {head_revision()}); upgrade ssbench")
    return current


def _upgrade(conn: Connection, url: URL) -> None:
    from alembic import command
    from alembic.util import CommandError

    try:
        _refuse_newer(conn, url)
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
    except DBAPIError as err:  # e.g. no CREATE permission, the server went away mid-migration
        raise _store_error(url, "migrating to head failed: ", err) from None
    except CommandError as err:  # a revision graph this ssbench cannot follow
        raise _store_error(url, f"its schema is not one this ssbench (head {head_revision()}) knows; "
                                "is it from a newer ssbench? ", err) from None


def _check_readable(conn: Connection, url: URL, why: str) -> None:
    """A read-only store is not migrated: it is read as it is when this ssbench's tables and columns
    are all there (an older revision may well have them); otherwise reading needs the migration."""
    from ssbench.store.models import Base

    current = _refuse_newer(conn, url)
    if current == (head_revision(),):
        return
    have = inspect(conn)
    tables = set(have.get_table_names())
    for table in Base.metadata.sorted_tables:
        columns = {c["name"] for c in have.get_columns(table.name)} if table.name in tables else set()
        if not {c.name for c in table.columns} <= columns:
            shown = ", ".join(current) or "none: not an ssbench store"
            raise StoreError(f"results store {_shown(url)} is read-only ({why}) and its schema (revision {shown}) "
                             f"must be migrated to {head_revision()} before this ssbench can read it; open it once "
                             "where it is writable, or read it with the ssbench that wrote it")


def migrate(engine: Engine) -> None:
    """`alembic upgrade head` on this engine (a no-op when already at head), once even when several
    processes open a fresh store together; a read-only store is only checked to be readable.
    Connection failures raise a one-line StoreError."""
    why = read_only_reason(engine)
    with _connect(engine) as conn:
        if why is None:
            with _migration_lock(conn):
                _upgrade(conn, engine.url)
            return
        try:
            _check_readable(conn, engine.url, why)
        except DBAPIError as err:
            raise _store_error(engine.url, f"reading it failed ({why}): ", err) from None


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
