"""Job claims: exactly once across processes, on SQLite and a real PostgreSQL server."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from pydantic import BaseModel
from sqlalchemy import select, update

from ssbench.store import claims, open_store
from ssbench.store.models import Claim, Run


class Cfg(BaseModel):
    lr: float = 0.1


def _dead_pid() -> int:
    """A pid of this host whose process has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _row(store, key: str) -> Claim:
    with store.session() as s:
        return s.scalars(select(Claim).where(Claim.config_hash == key)).one()


def test_claim_then_busy_then_done(store_url: str) -> None:
    store = open_store(store_url)
    got = claims.acquire(store, "finetune", "h1", label="finetune fa")
    assert isinstance(got, claims.Lease) and got.attempts == 1
    # this process is alive and holds it: anyone else is told who has it
    busy = claims.acquire(store, "finetune", "h1", label="finetune fa")
    assert isinstance(busy, claims.Busy) and busy.pid == os.getpid()
    assert claims.claim_state(store, "finetune", "h1")[0] == "running"
    with store.run("finetune", config=Cfg()) as rec:
        pass
    assert got.finish(rec.run_id)
    assert claims.acquire(store, "finetune", "h1", label="x") == claims.Done(rec.run_id)
    # another kind with the same hash is another job
    assert isinstance(claims.acquire(store, "attack", "h1", label="x"), claims.Lease)
    store.close()


def test_a_dead_holder_is_taken_over_and_its_run_marked_failed(store_url: str) -> None:
    store = open_store(store_url)
    lease = claims.acquire(store, "pretrain", "h2", label="pretrain")
    assert isinstance(lease, claims.Lease)
    with pytest.raises(RuntimeError), store.run("pretrain", config=Cfg()) as rec:
        raise RuntimeError("x")  # a run row exists; make it look like the dead worker's 'running' run
    dead = _dead_pid()
    with store.session() as s, s.begin():
        s.execute(update(Claim).where(Claim.id == lease.id).values(pid=dead))
        s.execute(update(Run).where(Run.id == rec.run_id).values(status="running", pid=dead, config_hash="h2",
                                                                 error=None))
    assert claims.claim_state(store, "pretrain", "h2")[0] == "stale"
    again = claims.acquire(store, "pretrain", "h2", label="pretrain")
    assert isinstance(again, claims.Lease) and again.attempts == 2 and again.token != lease.token
    killed = store.get_run(rec.run_id)
    assert killed.status == "failed" and killed.error.startswith("WorkerLost:")
    # the old holder, were it alive after all, has lost the claim: it cannot finish the job
    assert not lease.heartbeat() and lease.lost
    assert again.heartbeat()
    store.close()


def test_stale_heartbeat_on_another_host_is_taken_over_a_fresh_one_is_not(store_url: str) -> None:
    store = open_store(store_url)
    lease = claims.acquire(store, "train", "h3", label="train")
    old = claims._now() - timedelta(seconds=claims.DEFAULT_TTL_S + 5)
    with store.session() as s, s.begin():
        s.execute(update(Claim).where(Claim.id == lease.id).values(host="elsewhere", pid=1))
    assert isinstance(claims.acquire(store, "train", "h3", label="train"), claims.Busy)
    with store.session() as s, s.begin():
        s.execute(update(Claim).where(Claim.id == lease.id).values(heartbeat_at=old))
    assert isinstance(claims.acquire(store, "train", "h3", label="train"), claims.Lease)
    store.close()


def test_failed_job_is_claimed_again_and_finished_run_lost_claim_is_refused(store_url: str) -> None:
    store = open_store(store_url)
    first = claims.acquire(store, "train", "h4", label="t")
    first.fail("RuntimeError: boom")
    assert claims.claim_state(store, "train", "h4")[0] == "failed"
    second = claims.acquire(store, "train", "h4", label="t")
    assert isinstance(second, claims.Lease) and second.attempts == 2
    # a stale holder that finishes anyway: its run is marked failed, the claim stays with the new one
    with store.run("train", config=Cfg()) as rec:
        pass
    assert not first.finish(rec.run_id)
    assert store.get_run(rec.run_id).status == "failed"
    assert _row(store, "h4").status == "running"
    store.close()


def test_lease_heartbeats_while_held(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv(claims.HEARTBEAT_ENV, "1.0")  # beat every 0.25 s
    store = open_store(store_url)
    lease = claims.acquire(store, "train", "h5", label="t")
    before = _row(store, "h5").heartbeat_at
    with lease:
        time.sleep(1.0)
    assert _row(store, "h5").heartbeat_at > before
    store.close()


def _race(url: str, n: int, barrier, results) -> None:  # noqa: ANN001
    store = open_store(url)
    barrier.wait()
    got = claims.acquire(store, "finetune", "race", label=f"worker {n}")
    results.put(type(got).__name__)
    if isinstance(got, claims.Lease):
        barrier.wait()  # hold it (alive) until everyone has tried
    else:
        barrier.wait()
    store.close()


def test_concurrent_processes_take_a_job_exactly_once(store_url: str) -> None:
    open_store(store_url).close()  # migrated before the race: the race is about the claim
    ctx = mp.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(store_url, i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    got = sorted(results.get(timeout=5) for _ in range(n))
    assert got == ["Busy"] * (n - 1) + ["Lease"]
    assert all(p.exitcode == 0 for p in procs)


def test_job_hash_names_runs_by_their_hash_and_migration_0003_rekeys_old_rows(tmp_path) -> None:
    from alembic import command

    from ssbench.store import config_hash
    from ssbench.store.engine import alembic_config, make_engine
    from ssbench.store.store import canonical_json

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    with engine.connect() as conn:  # a store as revision 0002 left it: finetune keyed by its source's row id
        command.upgrade(alembic_config(conn), "0002")
        conn.commit()
    pre_cfg, ft_cfg = {"kind": "pretrain", "lr": 0.1}, {"kind": "finetune", "source": "1", "lr": 0.01}
    with engine.begin() as conn:
        for i, cfg in ((1, pre_cfg), (2, ft_cfg)):
            conn.exec_driver_sql(
                "INSERT INTO runs (id, kind, status, tags, config, config_hash, versions, started_at, summary) "
                "VALUES (?, ?, 'finished', '[]', ?, ?, '{}', '2026-01-01', '{}')",
                (i, cfg["kind"], canonical_json(cfg), config_hash(cfg)))
    engine.dispose()
    store = open_store(url)  # migrates to head
    pre, ft = store.get_run(1), store.get_run(2)
    assert pre.config_hash == config_hash(pre_cfg)  # no run reference: unchanged
    assert ft.config_hash == config_hash({**ft_cfg, "source": f"run:{pre.config_hash}"}) != config_hash(ft_cfg)
    assert ft.config_hash == store.job_hash(ft_cfg)  # the migration and the store agree
    store.close()
