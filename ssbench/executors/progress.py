"""What a driver shows: a line per job started / finished / failed / skipped, and (when jobs run
elsewhere, so no job draws its own bars here) one overall progress bar."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ssbench.executors.task import Outcome
from ssbench.recipes.plan import Job, Plan

_STYLE = {"started": "cyan", "finished": "green", "done": "dim", "failed": "red", "skipped": "yellow", "held": "yellow"}


def line(event: str, job: Job, outcome: Outcome | None, plan: Plan) -> str:
    o = outcome or Outcome("busy")
    tail = {
        "started": f"on {o.where}",
        "finished": f"-> run {o.run_id}" + (f" (attempt {o.attempts})" if o.attempts > 1 else ""),
        "done": f"already finished as run {o.run_id}",
        "failed": o.error or "",
        "skipped": (o.error or "").removeprefix("skipped: "),
        "held": f"claimed by live worker {o.where}; waiting for it",
    }[event]
    return f"#{plan.number(job.key)} {event} {job.label}: {tail}"


class ConsoleLog:
    """The driver's `log`; as a context manager it draws the overall bar (`bar=True`)."""

    def __init__(self, plan: Plan, console: Console, *, bar: bool) -> None:
        self.plan, self.console = plan, console
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, disable=not bar, transient=True)
        self._bar: Any = None

    def __enter__(self) -> ConsoleLog:
        self._progress.start()
        self._bar = self._progress.add_task(escape(f"recipe {self.plan.recipe.name}"), total=len(self.plan))
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, event: str, job: Job, outcome: Outcome | None, done: int, total: int) -> None:
        self.console.print(f"[{_STYLE[event]}]{escape(line(event, job, outcome, self.plan))}[/]", highlight=False)
        if self._bar is not None:
            self._progress.update(self._bar, completed=done)
