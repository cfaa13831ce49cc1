"""One job as an executor runs it: the resolved spec in, an `Outcome` out, exactly once.

`run_task` is the only code that runs a job, whichever executor calls it (in-process or a Ray
worker): it takes the job's claim in the store, runs it under a heart-beaten lease and records how
it ended. A job that raises is recorded as failed and returned, never re-raised, so an executor can
tell a job's own error (not retried) from a dead worker (retried).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ssbench.recipes.plan import Job
from ssbench.recipes.schema import Resources
from ssbench.specs import AttackSpec, TrainSpec

Status = Literal["finished", "done", "failed", "busy", "skipped"]


@dataclass(frozen=True)
class Task:
    """A job whose spec names real run ids: ready to claim and run."""

    key: str  # the plan's job key
    kind: str
    spec: TrainSpec | AttackSpec
    config_hash: str  # the store's key of the job: `Store.job_hash` of the spec, its run's config_hash
    label: str
    recipe: str | None
    resources: Resources

    @classmethod
    def of(cls, job: Job, run_ids: dict[str, int], store: Any) -> Task:
        spec = job.resolve(run_ids)
        return cls(job.key, job.kind, spec, store.job_hash(spec), job.label, spec.recipe, job.resources)


@dataclass(frozen=True)
class Outcome:
    status: Status  # finished: ran now; done: had finished before; busy: a live worker holds it
    run_id: int | None = None
    error: str | None = None
    attempts: int = 1
    where: str = ""  # host:pid of the worker that ran (or holds) it

    @property
    def ok(self) -> bool:
        return self.status in ("finished", "done")


def _train(spec: Any, store: Any, **kw: Any) -> int:
    from ssbench.training import run_training

    # the caller holds the job's claim: any run of it left 'running' elsewhere is a dead attempt to resume
    return run_training(spec, store, claimed=True, **kw)


def _attack(spec: Any, store: Any, **kw: Any) -> int:
    from ssbench.attacks import run_attack

    return run_attack(spec, store, **kw)


# the one list of what runs each job kind (plan.JobKind names the same four)
RUNNERS: dict[str, Callable[..., int]] = {"pretrain": _train, "finetune": _train, "train": _train, "attack": _attack}


def run_task(task: Task, store: Any, *, console: Any = None, quiet: bool = True) -> Outcome:
    """Claim, run and record one job. Returns `done`/`busy` without running when the store says so."""
    import os
    import socket

    from ssbench.store import claims
    from ssbench.store.store import error_line

    where = f"{socket.gethostname()}:{os.getpid()}"
    got = claims.acquire(store, task.kind, task.config_hash, label=task.label, recipe=task.recipe)
    if isinstance(got, claims.Done):
        return Outcome("done", got.run_id)
    if isinstance(got, claims.Busy):
        return Outcome("busy", where=f"{got.host}:{got.pid}")
    with got as lease:
        try:
            run_id = RUNNERS[task.kind](task.spec, store, console=console, quiet=quiet)
        except KeyboardInterrupt:
            if lease.lost:  # the heartbeat found another worker holding the job and stopped this one
                return Outcome("failed", error="LostClaim: another worker took this job over", where=where)
            lease.fail("KeyboardInterrupt: interrupted")
            raise
        except Exception as err:  # noqa: BLE001  (the job's own error: recorded, not retried)
            lease.fail(error_line(err))
            return Outcome("failed", error=error_line(err), attempts=lease.attempts, where=where)
        except BaseException as err:  # SIGTERM's SystemExit: the claim must not look alive
            lease.fail(error_line(err))
            raise
        if not lease.finish(run_id):
            return Outcome("failed", run_id, "LostClaim: another worker took this job over", lease.attempts, where)
    return Outcome("finished", run_id, attempts=lease.attempts, where=where)
