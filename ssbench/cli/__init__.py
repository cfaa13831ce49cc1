"""Thin typer CLI over the ssbench library. Each module registers its commands on `app`."""
from __future__ import annotations

from importlib import import_module

from ssbench.cli.app import app

# pipeline order: this is the order `ssbench --help` lists the commands in
for _module in ("train", "attack", "analyze", "report", "runs", "recipe", "rules"):
    import_module(f"ssbench.cli.{_module}").register(app)


def main() -> None:
    app()


__all__ = ["app", "main"]
