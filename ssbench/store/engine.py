"""Engine construction (SQLite pragmas) and migrations on open."""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


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


def make_engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    else:  # in-memory: one shared connection, or every session would see an empty database
        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    on_file = path is not None

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
        conn.exec_driver_sql("BEGIN IMMEDIATE")

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


def migrate(engine: Engine) -> None:
    """`alembic upgrade head` on this engine (a no-op when already at head)."""
    from alembic import command

    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "head")
        conn.commit()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
