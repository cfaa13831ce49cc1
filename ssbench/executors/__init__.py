"""Executors run a recipe's plan: `local` (in-process) or `ray` (a Ray cluster), through one
scheduling loop (`driver.execute`) and one job runner (`task.run_task`).

    from ssbench.executors import run_recipe
    result = run_recipe(load_recipe("recipes/quickstart.yaml"), open_store(), executor="ray")
    result.ran, result.already, result.failed       # [(Job, Outcome)]
"""
from __future__ import annotations

from typing import Any

from ssbench.executors.driver import Executor, Log, Result, execute
from ssbench.executors.task import Outcome, Task, run_task
from ssbench.recipes import Overrides, Recipe, Resources, check_requirements, plan
from ssbench.recipes.plan import MAX_JOBS
from ssbench.registry import Registry

EXECUTORS: Registry[Any] = Registry("executor")


@EXECUTORS.register("local", "every job in this process, one after the other")
def _local(store: Any, **kw: Any) -> Executor:
    from ssbench.executors.local import LocalExecutor

    return LocalExecutor(store, console=kw.get("console"), quiet=kw.get("quiet", False))


@EXECUTORS.register("ray", "one Ray task per job on a local Ray or a cluster (--address)")
def _ray(store: Any, **kw: Any) -> Executor:
    from ssbench.executors.ray_executor import RayExecutor

    return RayExecutor(store, address=kw.get("address"), retries=kw.get("retries", 2), console=kw.get("console"))


def make_executor(name: str, store: Any, **kw: Any) -> Executor:
    return EXECUTORS.get(name)(store, **kw)


def _quiet_log(*_args: Any) -> None:
    return None


def run_recipe(recipe: Recipe, store: Any, ov: Overrides = Overrides(), *, executor: str = "local",
               resources: Resources | None = None, log: Log = _quiet_log, force: bool = False,
               max_jobs: int | None = MAX_JOBS, **options: Any) -> Result:
    """Plan the recipe and run it to the end; `force` skips the `requires` check, `max_jobs` caps the
    grid (None: no cap). Options go to the executor (address, retries, console, quiet)."""
    if not force:
        check_requirements(recipe)
    jobs = plan(recipe, ov, resources, max_jobs=max_jobs)
    return execute(jobs, store, make_executor(executor, store, **options), log=log)


__all__ = ["EXECUTORS", "Executor", "Outcome", "Result", "Task", "execute", "make_executor", "run_recipe", "run_task"]
