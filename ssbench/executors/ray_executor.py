"""`--executor ray`: one Ray task per job, on a local Ray (this machine's CPUs and GPUs, shut
down at the end) or an existing cluster (`--address HOST:PORT`).

Each task asks for the job's CPUs and GPUs, sets torch's threads to its CPU allotment (two jobs
never fight over cores), opens the store inside the worker (engines are never shared across
processes) and calls the same `run_task` as the local executor. A worker that dies (SIGKILL, out
of memory, node lost) is retried by Ray up to `retries` times; the retry takes the dead worker's
claim over. A job that raises returns a failed outcome and is not retried.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from ssbench.errors import SpecError
from ssbench.executors.task import Outcome, Task, run_task
from ssbench.store import claims


@lru_cache(maxsize=4)
def _worker_store(url: str, artifacts: str | None) -> Any:
    """One store (engine) per worker process and URL, reused by the tasks that process runs."""
    from ssbench.store import open_store

    return open_store(url, artifacts=artifacts)


def _run_in_worker(task: Task, url: str, artifacts: str | None, threads: int) -> Outcome:
    import torch

    torch.set_num_threads(threads)
    return run_task(task, _worker_store(url, artifacts), quiet=True)


def wants_gpu(device: str, cluster_gpus: float) -> bool:
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


class RayExecutor:
    name = "ray"

    def __init__(self, store: Any, *, address: str | None = None, retries: int = 2, console: Any = None) -> None:
        self.store, self.address, self.retries, self.console = store, address, retries, console
        self._refs: dict[Any, Task] = {}
        self._unstarted: dict[str, Task] = {}
        self._on_start: Callable[[Task, str], None] = lambda _t, _w: None
        self._started_here = False
        self._gpus = 0.0

    def start(self, on_start: Callable[[Task, str], None]) -> None:
        try:
            import ray
        except ImportError:
            raise SpecError("--executor ray needs Ray: pip install 'ssbench[scale]'") from None
        self._on_start = on_start
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SpecError(f"--address {self.address}: cannot join the Ray cluster ({first})") from None
        else:
            import torch

            # this machine's cores and GPUs; the driver only waits, so every core goes to jobs
            # "local": a new instance even where another Ray runs on this machine (never join it unasked)
            ray.init(address="local", num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(),
                     include_dashboard=False, log_to_driver=False)
            self._started_here = True
        self._gpus = float(ray.cluster_resources().get("GPU", 0.0))
        self._remote = ray.remote(_run_in_worker)

    def _gpus_for(self, task: Task) -> float:
        if task.resources.gpus is not None:
            return task.resources.gpus
        # a data-parallel training job (compute.gpus) spawns one process per GPU: it needs them all
        gpus = getattr(getattr(task.spec, "compute", None), "gpus", 1)
        return float(gpus) if wants_gpu(task.spec.device, self._gpus) else 0.0

    def submit(self, task: Task) -> None:
        cpus = task.resources.cpus
        ref = self._remote.options(
            num_cpus=cpus, num_gpus=self._gpus_for(task), max_retries=self.retries, retry_exceptions=False,
            name=task.label[:100],
        ).remote(task, self.store.url, str(self.store.artifacts), max(1, math.floor(cpus)))
        self._refs[ref] = task
        self._unstarted[task.key] = task

    def _announce_started(self) -> None:
        """Ray does not say when a task starts; its claim in the store does."""
        for key, task in list(self._unstarted.items()):
            state, row, _ = claims.claim_state(self.store, task.kind, task.config_hash)
            if state in ("running", "done") and row is not None:
                del self._unstarted[key]
                self._on_start(task, f"{row.host}:{row.pid}")

    def wait(self, timeout: float) -> list[tuple[Task, Outcome]]:
        import ray

        deadline = time.monotonic() + timeout
        while True:
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._announce_started()
            if ready or time.monotonic() >= deadline:
                break
        done = []
        for ref in ready:
            task = self._refs.pop(ref)
            self._unstarted.pop(task.key, None)
            done.append((task, self._outcome(ref, task)))
        return done

    def _outcome(self, ref: Any, task: Task) -> Outcome:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:  # the worker died more often than retries allow
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            error = f"{type(err).__name__}: {first[:300]} (after {self.retries + 1} attempts)"
            claims.abandon(self.store, task.kind, task.config_hash, error)
            return Outcome("failed", error=error, attempts=self.retries + 1)

    def shutdown(self) -> None:
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            ray.shutdown()  # a local Ray started here stops with it; a cluster is only left
