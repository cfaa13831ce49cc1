"""Thin typer CLI over the ssbench library. Each module registers its commands on `app`."""
from __future__ import annotations

import signal
from importlib import import_module

from ssbench.cli.app import app

# pipeline order: this is the order `ssbench --help` lists the commands in
for _module in ("train", "attack", "analyze", "report", "runs", "recipe", "rules"):
    import_module(f"ssbench.cli.{_module}").register(app)


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM (a cluster scheduler, `kill`) becomes an exception, so the running job's store
    # context marks its run failed instead of leaving it 'running' forever.
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    app()


__all__ = ["app", "main"]
