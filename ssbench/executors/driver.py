"""The one scheduling loop every executor shares: submit each job as soon as what it needs has
finished, collect outcomes, skip the dependants of a failure, wait for jobs another driver holds.

An executor only runs tasks (`submit` / `wait`); ordering, skipping, exactly-once peeks and the
log lines live here, so `--executor local` and `--executor ray` cannot drift apart.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ssbench.executors.task import Outcome, Task
from ssbench.recipes.plan import Job, Plan
from ssbench.store import claims

POLL_S = 2.0  # how often a job held by another driver is looked at again


class Executor(Protocol):
    name: str

    def start(self, on_start: Callable[[Task, str], None]) -> None:
        """Connect; call `on_start(task, "host:pid")` when a submitted task begins to run."""

    def submit(self, task: Task) -> None: ...

    def wait(self, timeout: float) -> list[tuple[Task, Outcome]]:
        """Outcomes of submitted tasks that ended, waiting at most `timeout` seconds for one."""

    def shutdown(self) -> None: ...


@dataclass
class Result:
    plan: Plan
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def _with(self, *statuses: str) -> list[tuple[Job, Outcome]]:
        return [(j, self.outcomes[j.key]) for j in self.plan if self.outcomes.get(j.key, Outcome("skipped")).status in statuses]

    @property
    def ran(self) -> list[tuple[Job, Outcome]]:
        return self._with("finished")

    @property
    def already(self) -> list[tuple[Job, Outcome]]:
        return self._with("done")

    @property
    def failed(self) -> list[tuple[Job, Outcome]]:
        """Failed jobs and the jobs skipped because of them."""
        return self._with("failed", "skipped")


class Log(Protocol):
    def __call__(self, event: str, job: Job, outcome: Outcome | None, done: int, total: int) -> None: ...


def _blocked_by(job: Job, outcomes: dict[str, Outcome]) -> str | None:
    """The needed job that did not end well (an `after` job is ordering only: an attack's transfer
    mode notes a missing BP sibling itself)."""
    if job.source is not None and not outcomes[job.source].ok:
        return job.source
    return None


def execute(plan: Plan, store: Any, executor: Executor, *, log: Log, poll_s: float = POLL_S,
            clock: Callable[[], float] = time.monotonic) -> Result:
    result = Result(plan)
    out = result.outcomes
    running: set[str] = set()
    retry_at: dict[str, float] = {}  # held by another driver's worker: look again then
    announced: set[str] = set()
    total = len(plan)

    def settle(job: Job, outcome: Outcome, event: str) -> None:
        out[job.key] = outcome
        retry_at.pop(job.key, None)
        log(event, job, outcome, len(out), total)

    def started(task: Task, where: str) -> None:
        log("started", plan.job(task.key), Outcome("busy", where=where), len(out), total)

    executor.start(started)
    try:
        while len(out) < total:
            now = clock()
            for job in plan:
                if job.key in out or job.key in running or retry_at.get(job.key, 0.0) > now:
                    continue
                if any(d not in out for d in job.deps):
                    continue
                bad = _blocked_by(job, out)
                if bad is not None:
                    why = f"skipped: {plan.job(bad).label} {'failed' if out[bad].status == 'failed' else 'was skipped'}"
                    settle(job, Outcome("skipped", error=why), "skipped")
                    continue
                task = Task.of(job, {k: o.run_id for k, o in out.items() if o.run_id is not None}, store)
                state, row, run_id = claims.claim_state(store, task.kind, task.config_hash)
                if state == "done":
                    settle(job, Outcome("done", run_id), "done")
                    continue
                if state == "running":  # a live worker of another driver: never run it twice
                    retry_at[job.key] = now + poll_s
                    if job.key not in announced:
                        announced.add(job.key)
                        log("held", job, Outcome("busy", where=f"{row.host}:{row.pid}"), len(out), total)
                    continue
                retry_at.pop(job.key, None)
                executor.submit(task)
                running.add(job.key)
            if not running:
                if len(out) < total:
                    time.sleep(max(0.0, min(retry_at.values(), default=now) - clock()))
                continue
            for task, outcome in executor.wait(poll_s if retry_at else 3600.0):
                running.discard(task.key)
                job = plan.job(task.key)
                if outcome.status == "busy":  # lost the race for the claim to another driver
                    retry_at[job.key] = clock() + poll_s
                    continue
                settle(job, outcome, outcome.status)
    finally:
        executor.shutdown()
    return result
