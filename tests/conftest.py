from __future__ import annotations

import os

import pytest

# Keep the suite on 2 cores predictable, and never let a test touch the user's results store.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSBENCH_DB", raising=False)
    yield
