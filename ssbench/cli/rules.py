"""`ssbench rules`: the learning rules, what B each one uses."""
from __future__ import annotations

import typer
from rich.table import Table

from ssbench.printing import SafeConsole


def register(app: typer.Typer) -> None:
    @app.command("rules")
    def rules() -> None:
        """List the learning rules and the feedback tensor B each sends backward."""
        from ssbench.rules import RULES

        table = Table("rule", "feedback B used for the input gradient")
        for name in RULES.names():
            table.add_row(name, RULES.help(name))
        SafeConsole().print(table)
