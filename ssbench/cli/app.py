"""The typer application object and the one place user errors become one line + exit code 2."""
from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from ssbench.errors import SsbenchError


def validation_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"invalid {where}: {first.get('msg', err)}{more}"


class SsbenchGroup(TyperGroup):
    """Catches user-fixable errors from any command (sub-apps included) and prints one line."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SsbenchError as err:
            typer.secho(f"error: {err}", err=True, fg="red")
            ctx.exit(2)
        except ValidationError as err:
            typer.secho(f"error: {validation_line(err)}", err=True, fg="red")
            ctx.exit(2)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # pipeline order, as registered


app = typer.Typer(
    cls=SsbenchGroup,
    name="ssbench",
    help=(
        "Benchmark learning rules that avoid weight transport.\n\n"
        "Pipeline: pretrain (BP) -> finetune --rule R -> attack (feedback / exact / transfer "
        "gradients) -> report. Every number lands in one results database (SSBENCH_DB, default "
        "./ssbench-results/results.db), so report can rebuild any table later. "
        "`ssbench run recipes/quickstart.yaml` runs a whole grid."
    ),
    no_args_is_help=True,
    # markdown: docstrings wrapped at 100 columns reflow to the terminal instead of breaking mid-line
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
