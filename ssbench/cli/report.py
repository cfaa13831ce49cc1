"""`ssbench report`: tables and plots rebuilt from the results store."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ssbench.cli.options import Db

TableName = Literal["clean", "robust", "alignment", "hashing", "sanity", "all"]
FormatName = Literal["terminal", "markdown", "latex", "csv"]

HELP = (
    "Tables and plots from the results store alone (re-run it any time; nothing is recomputed).\n\n"
    "Tables: clean = test accuracy per rule x model x dataset (mean ± std over seeds); "
    "robust = robust accuracy per attack x gradient mode x ε, with 'worst' = an example counts as robust "
    "only if it survives every gradient mode (feedback, exact, transfer); alignment = angle(W, B) and "
    "|B|/|W| per layer at the last epoch; hashing = retrieval mAP per rule x bits and under attack; "
    "sanity = failed sanity checks. Numbers marked '!' rest on failed sanity checks.\n\n"
    "Only finished runs count. --out DIR writes one file per table (markdown .md, latex .tex, csv .csv) "
    "plus PNG + SVG plots; without --out tables go to the terminal / stdout.\n\n"
    "Examples: ssbench report --recipe quickstart | "
    "ssbench report --format latex --out paper/ --dataset fashion-mnist | "
    "ssbench report --table robust --rule fa --format csv > fa.csv"
)


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report(
        db: Db = None,
        fmt: Annotated[FormatName, typer.Option("--format", "-f", help="terminal (rich tables), markdown, latex (booktabs), csv (raw numbers, long form)")] = "terminal",
        out: Annotated[Path | None, typer.Option(help="folder for table files and plots (PNG + SVG)")] = None,
        recipe: Annotated[str | None, typer.Option(help="only runs of this recipe")] = None,
        tag: Annotated[str | None, typer.Option(help="only runs carrying this tag")] = None,
        dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="only this data set")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="only this model")] = None,
        rule: Annotated[str | None, typer.Option("--rule", "-r", help="only this learning rule")] = None,
        table: Annotated[TableName, typer.Option("--table", "-t", help="which table (all = every table that has data)")] = "all",
        plots: Annotated[bool, typer.Option("--plots/--no-plots", help="with --out: also draw robustness, alignment and training-curve plots")] = True,
    ) -> None:
        from rich.console import Console

        from ssbench.report import build_report
        from ssbench.store import open_store

        # machine formats to stdout must stay parseable: no wrapping, no colour
        console = Console() if fmt == "terminal" or out is not None else Console(soft_wrap=True, color_system=None)
        build_report(
            open_store(db), recipe=recipe, tag=tag, dataset=dataset, model=model, rule=rule, tables=table,
            formats=(fmt,), out=out, plots=plots, console=console,
        )
