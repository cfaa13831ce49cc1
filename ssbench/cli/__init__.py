"""Thin typer CLI over the ssbench library. Each module registers its commands on `app`."""
from __future__ import annotations

import signal
from importlib import import_module

from ssbench.cli.app import app
from ssbench.errors import raise_terminated

# pipeline order: this is the order `ssbench --help` lists the commands in
for _module in ("train", "attack", "analyze", "report", "runs", "recipe", "rules"):
    import_module(f"ssbench.cli.{_module}").register(app)


def main() -> None:
    signal.signal(signal.SIGTERM, raise_terminated)  # the running job's run is marked failed, saying why
    app()


__all__ = ["app", "main"]
