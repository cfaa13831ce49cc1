"""Where each job of a plan stands in a store: what `ssbench run --dry-run` shows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssbench.recipes.plan import Plan
from ssbench.store import claims


@dataclass(frozen=True)
class JobState:
    state: str  # done | to run | failed | claimed | stale | waits
    run_id: int | None = None
    detail: str = ""


def plan_state(plan: Plan, store: Any) -> dict[str, JobState]:
    """Each job's state by plan key. A job whose needed run does not exist yet 'waits': its
    config (and so its claim) is only known once that run is."""
    states: dict[str, JobState] = {}
    run_ids: dict[str, int] = {}
    for job in plan:
        if job.source is not None and job.source not in run_ids:
            states[job.key] = JobState("waits", detail=f"for #{plan.number(job.source)}")
            continue
        key = store.job_hash(job.resolve(run_ids))
        state, row, run_id = claims.claim_state(store, job.kind, key)
        if state == "done":
            run_ids[job.key] = run_id
            states[job.key] = JobState("done", run_id)
        elif state == "running":
            states[job.key] = JobState("claimed", detail=f"by live worker {row.host}:{row.pid}")
        elif state == "stale":
            states[job.key] = JobState("stale", detail=f"{row.host}:{row.pid} is gone; will be taken over")
        elif state == "failed":
            states[job.key] = JobState("failed", detail=f"{row.attempts} attempt(s): {row.error or ''}"[:120])
        else:
            states[job.key] = JobState("to run")
    return states
