"""Exactly-once job execution across drivers and workers, kept in the store (not the executor).

    got = acquire(store, kind, config_hash, label=...)   # Lease | Done | Busy
    if isinstance(got, Lease):
        with got:                      # heart-beats the claim from a thread while the job runs
            run_id = run_the_job()
            got.finish(run_id)         # or got.fail(error)

Taking a claim is an INSERT against the unique (kind, config_hash) key, or, for a failed claim or
one whose holder is gone (its process ended on this host, or its heartbeat is older than the TTL),
a compare-and-swap UPDATE on the row's `token`. Both are single statements, atomic on SQLite and
PostgreSQL alike, so any number of drivers on any number of machines can share one store.
"""
from __future__ import annotations

import _thread
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ssbench.store.models import Claim, Run

HEARTBEAT_ENV = "SSBENCH_CLAIM_TTL"
DEFAULT_TTL_S = 120.0  # a claim not heart-beaten for this long is taken over (other hosts)


def claim_ttl() -> float:
    return float(os.environ.get(HEARTBEAT_ENV) or DEFAULT_TTL_S)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite hands back naive datetimes


@dataclass(frozen=True)
class Done:
    """The job already finished: `run_id` is its run."""

    run_id: int


@dataclass(frozen=True)
class Busy:
    """A live worker holds the job."""

    host: str
    pid: int
    since: datetime


def holder_alive(row: Claim, ttl: float | None = None) -> bool:
    """Is the claim's holder still working on it? On this host its process must exist (and be
    older than the claim); anywhere its heartbeat must be fresher than the TTL."""
    from ssbench.store.store import _process_started_before

    if _now() - _utc(row.heartbeat_at) > timedelta(seconds=claim_ttl() if ttl is None else ttl):
        return False
    if row.host == socket.gethostname():
        return _process_started_before(row.pid, _utc(row.claimed_at))
    return True


class ClaimState(NamedTuple):
    state: str  # done | running | stale | failed | new
    row: Claim | None
    run_id: int | None = None  # the finished run, when done


def claim_state(store, kind: str, config_hash: str) -> ClaimState:  # noqa: ANN001
    """Where a job stands, without taking anything."""
    with store.session() as s:
        row = s.scalars(select(Claim).where(Claim.kind == kind, Claim.config_hash == config_hash)).first()
    finished = store.find_finished(kind, config_hash)
    if finished is not None:
        return ClaimState("done", row, int(finished.id))
    if row is None:
        return ClaimState("new", None)
    if row.status == "running":
        return ClaimState("running" if holder_alive(row) else "stale", row)
    return ClaimState(row.status, row)


class Lease:
    """A claim this process holds. As a context manager it heart-beats the row from a daemon
    thread; if another worker took the claim over meanwhile (this one looked dead), the job is
    interrupted (KeyboardInterrupt in the main thread) and `lost` is set."""

    def __init__(self, store, row_id: int, token: str, kind: str, config_hash: str, attempts: int) -> None:  # noqa: ANN001
        self.store, self.id, self.token = store, row_id, token
        self.kind, self.config_hash, self.attempts = kind, config_hash, attempts
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _mine(self):  # noqa: ANN202
        return update(Claim).where(Claim.id == self.id, Claim.token == self.token, Claim.status == "running")

    def heartbeat(self) -> bool:
        with self.store.session() as s, s.begin():
            ok = s.execute(self._mine().values(heartbeat_at=_now())).rowcount == 1
        if not ok:
            self.lost = True
        return ok

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not self.heartbeat():
                    _thread.interrupt_main()  # another worker runs the job now: stop wasting the device
                    return
            except Exception:  # noqa: BLE001  (a store hiccup: try again next beat; the TTL is generous)
                continue

    def __enter__(self) -> Lease:
        interval = max(0.2, claim_ttl() / 4)
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True, name="ssbench-claim")
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def finish(self, run_id: int) -> bool:
        """Mark the job finished with its run. False if the claim was lost meanwhile: then the run
        is marked failed too, so the store never holds two finished runs of one job."""
        with self.store.session() as s, s.begin():
            ok = s.execute(self._mine().values(status="finished", run_id=run_id, finished_at=_now(),
                                               heartbeat_at=_now(), error=None)).rowcount == 1
            if not ok:
                s.execute(update(Run).where(Run.id == run_id).values(
                    status="failed", error="SupersededRun: another worker took this job over while it ran"))
        self.lost = self.lost or not ok
        return ok

    def fail(self, error: str, run_id: int | None = None) -> None:
        with self.store.session() as s, s.begin():
            s.execute(self._mine().values(status="failed", error=error, run_id=run_id, finished_at=_now()))


def _fail_abandoned_runs(session, row: Claim) -> None:  # noqa: ANN001
    """The runs the previous holder left 'running' are dead attempts: say so."""
    session.execute(
        update(Run)
        .where(Run.kind == row.kind, Run.config_hash == row.config_hash, Run.status == "running",
               Run.host == row.host, Run.pid == row.pid)
        .values(status="failed", finished_at=_now(),
                error=f"WorkerLost: worker {row.host}:{row.pid} stopped while running this job "
                      f"(killed, out of memory or node lost); attempt {row.attempts} of the job")
    )


def acquire(store, kind: str, config_hash: str, *, label: str, recipe: str | None = None,  # noqa: ANN001
            ttl: float | None = None) -> Lease | Done | Busy:
    """Take the job, or say who has it or which run already did it."""
    done = store.find_finished(kind, config_hash)  # also runs made before claims existed
    if done is not None:
        return Done(int(done.id))
    token, now = uuid.uuid4().hex, _now()
    mine = dict(token=token, host=socket.gethostname(), pid=os.getpid(), claimed_at=now, heartbeat_at=now)
    try:
        with store.session() as s, s.begin():
            row = Claim(kind=kind, config_hash=config_hash, status="running", label=label[:255], recipe=recipe,
                        attempts=1, **mine)
            s.add(row)
            s.flush()
            row_id = row.id
        return _confirm(store, Lease(store, row_id, token, kind, config_hash, 1))
    except IntegrityError:
        pass
    with store.session() as s:
        row = s.scalars(select(Claim).where(Claim.kind == kind, Claim.config_hash == config_hash)).one()
    if row.status == "finished" and row.run_id is not None:
        return Done(int(row.run_id))
    if row.status == "running" and holder_alive(row, ttl):
        return Busy(row.host, row.pid, _utc(row.claimed_at))
    # failed, finished without a run (deleted), or its holder is gone: compare-and-swap on the token
    with store.session() as s, s.begin():
        taken = s.execute(
            update(Claim).where(Claim.id == row.id, Claim.token == row.token)
            .values(status="running", attempts=Claim.attempts + 1, error=None, run_id=None, finished_at=None,
                    label=label[:255], recipe=recipe, **mine)
        ).rowcount == 1
        if taken and row.status == "running":
            _fail_abandoned_runs(s, row)
    if not taken:  # another worker was faster
        with store.session() as s:
            row = s.get(Claim, row.id)
        return Busy(row.host, row.pid, _utc(row.claimed_at))
    return _confirm(store, Lease(store, row.id, token, kind, config_hash, row.attempts + 1))


def _confirm(store, lease: Lease) -> Lease | Done:  # noqa: ANN001
    """A holder that died between finishing its run and its claim left a finished run behind:
    take that run instead of running the job again."""
    done = store.find_finished(lease.kind, lease.config_hash)
    if done is None:
        return lease
    lease.finish(int(done.id))
    return Done(int(done.id))


def abandon(store, kind: str, config_hash: str, error: str) -> None:  # noqa: ANN001
    """The executor knows the holder is gone for good (Ray gave up retrying): fail the claim and
    the run it left, so `ssbench runs` does not show them running."""
    with store.session() as s, s.begin():
        row = s.scalars(select(Claim).where(Claim.kind == kind, Claim.config_hash == config_hash,
                                            Claim.status == "running")).first()
        if row is None or holder_alive(row):  # another worker holds it now: theirs to finish
            return
        s.execute(update(Claim).where(Claim.id == row.id, Claim.token == row.token)
                  .values(status="failed", error=error, finished_at=_now()))
        _fail_abandoned_runs(s, row)
