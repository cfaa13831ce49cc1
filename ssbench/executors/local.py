"""`--executor local`: every job in this process, one after the other (today's numbers, the
jobs' own progress bars). Threads are left as torch sets them: one job has the machine."""
from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from ssbench.executors.task import Outcome, Task, run_task


class LocalExecutor:
    name = "local"

    def __init__(self, store: Any, *, console: Any = None, quiet: bool = False) -> None:
        self.store, self.console, self.quiet = store, console, quiet
        self._queue: deque[Task] = deque()
        self._on_start: Callable[[Task, str], None] = lambda _t, _w: None

    def start(self, on_start: Callable[[Task, str], None]) -> None:
        self._on_start = on_start

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def wait(self, timeout: float) -> list[tuple[Task, Outcome]]:  # noqa: ARG002  (runs one job now)
        if not self._queue:
            return []
        task = self._queue.popleft()
        self._on_start(task, f"{socket.gethostname()}:{os.getpid()}")
        return [(task, run_task(task, self.store, console=self.console, quiet=self.quiet))]

    def shutdown(self) -> None:
        self._queue.clear()
