from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pgserver import PgServer, find_bindir

# Keep the suite on 2 cores predictable, and never let a test touch the user's results store.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSBENCH_DB", raising=False)
    yield


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole session (host, port, user, password, create_database()).
    Skipped only where no initdb exists (`make test` installs Debian's postgresql)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed: no initdb under /usr/lib/postgresql/*/bin or on PATH "
                    "(apt-get install postgresql)")
    server = PgServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """postgresql+psycopg://USER:PASS@127.0.0.1:PORT/DBNAME of a freshly created, empty database."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty store URL of each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'results.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread for the test (`pytestmark = pytest.mark.usefixtures("one_thread")`): many tiny
    products, where thread start-up and spin-waits dominate on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def sqlite_store(tmp_path):  # noqa: ANN001, ANN201
    """A fresh SQLite results store whose artifact root is the test's tmp_path."""
    from ssbench.store import open_store

    s = open_store(f"sqlite:///{tmp_path / 'results.db'}", artifacts=tmp_path)
    yield s
    s.close()
