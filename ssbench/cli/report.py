"""`ssbench report`: tables and plots rebuilt from the results store."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ssbench.cli.options import Artifacts, Db, check_filters
from ssbench.printing import SafeConsole

# ssbench.report.render.FORMATS (tests/test_report.py checks they agree); the table names are the
# registry's alone (ssbench.report.registry), checked when given: importing it here would load
# pandas for every command
FormatName = Literal["terminal", "markdown", "latex", "csv", "json", "html"]


def table_name(value: str) -> str:
    """--table: a name of ssbench.report.registry.TABLES, or all (a usage error otherwise, as for --format)."""
    if value == "all":
        return value
    from ssbench.report.registry import TABLES

    if value not in TABLES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(repr(n) for n in ('all', *TABLES))}.")
    return value


HELP = (
    "Tables and plots from the results store alone (re-run it any time; nothing is recomputed).\n\n"
    "Rows are configurations, averaged over seeds only: rule, model and dataset carry each run's "
    "options from its stored config (ifa(θ=30), mlp[256x3], fashion-mnist[5-9, train=1500]), hashing "
    "runs their bits, and a 'variant' column names any other setting that differs (epochs=5).\n\n"
    "Tables: clean = test accuracy (mean ± std over seeds); "
    "robust = robust accuracy per attack x setting x gradient mode x ε, with 'worst' = an example counts as robust "
    "only if it survives every gradient mode of the attack, and 'worst of all' = only if it survives every attack and mode "
    "run on the same examples (n/a where they differ); sweeps that differ in loss, steps, restarts, queries, n or ε grid "
    "are separate rows (the 'setting' column names the difference), each from the newest attack run with that setting; "
    "leaderboard = one row per rule x model x data at one ε (--eps, else the largest ε every row has): "
    "clean, AutoAttack (exact), PGD with the feedback gradient (what the papers measured), transfer, black-box, worst of "
    "all, failed sanity checks; alignment = angle(W, B) and "
    "|B|/|W| per layer before training and at the last epoch, and the rule-vs-true gradient angle when "
    "tracked; hashing = retrieval mAP@K and precision@K per rule x bits, and mAP under attack; "
    "hessian = trace and top eigenvalue of the loss Hessian (ssbench analyze hessian); trajectory = loss, "
    "Hessian trace and top eigenvalue per kept epoch (ssbench analyze trajectory); corruptions = "
    "accuracy per corruption x severity and the mean corruption accuracy (ssbench analyze corruptions); "
    "trainability = final training accuracy over initial weight x feedback variances (ssbench analyze trainability); "
    "sanity = failed sanity checks. Numbers marked '!' rest on failed sanity checks. Accuracies on n examples carry "
    "their Wilson 95% score interval [lo, hi] of the pooled examples beside the ± std over seeds (csv: robust_lo, robust_hi).\n\n"
    "Formats: terminal = rich tables fitted to the terminal; markdown; latex = one table float per table (caption, "
    "\\label{tab:NAME}, booktabs, accuracies in %, intervals on a second line, marks explained under the table, "
    "scaled to the text width when wider; needs \\usepackage{booktabs,graphicx,array}); csv = the long form, "
    "raw numbers; json = the same long rows as objects (snake_case keys, numbers as numbers, null for missing, runs "
    "and seeds as arrays of ids): to stdout one document {table: [rows]}, with --out one NAME.json per table. "
    "JSON is a --format rather than a --json flag because report already chooses its output with --format: json "
    "composes with --out and --table like csv does, and there is no --json --format latex to define. "
    "html = one self-contained page, DIR/report.html (needs --out DIR): every table, the figures inline (SVG), the "
    "failed sanity checks and each run's provenance (config, seed, commit, versions); opens offline in a browser.\n\n"
    "Only finished runs count. --out DIR writes one file per table (markdown .md, latex .tex, csv .csv, json .json) "
    "plus PNG + SVG + PDF plots (robustness, alignment, training curves, Hessian spectrum and loss surface, "
    "curvature over training and PCA weight trajectories, accuracy vs corruption severity, trainability heatmap); without --out tables go to the terminal / stdout.\n\n"
    "Examples: ssbench report --recipe quickstart | "
    "ssbench report --format latex --out paper/ --dataset fashion-mnist | "
    "ssbench report --table robust --rule fa --format csv > fa.csv | "
    "ssbench report --table leaderboard --eps 8/255 | "
    "ssbench report --format json > results.json | "
    "ssbench report --recipe quickstart --format html --out report/"
)


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report(
        db: Db = None,
        artifacts: Artifacts = None,
        fmt: Annotated[FormatName, typer.Option("--format", "-f", help="terminal (rich tables), markdown, latex (table floats for papers), csv (raw numbers, long form), json (the long rows; one document on stdout), html (one self-contained page with every table, the figures and each run's provenance: DIR/report.html; needs --out DIR)")] = "terminal",
        out: Annotated[Path | None, typer.Option(help="folder for table files and plots (PNG + SVG + PDF)")] = None,
        recipe: Annotated[str | None, typer.Option(help="only runs of this recipe")] = None,
        tag: Annotated[str | None, typer.Option(help="only runs carrying this tag")] = None,
        dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="only this data set")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="only this model")] = None,
        rule: Annotated[str | None, typer.Option("--rule", "-r", help="only this learning rule (by name: --rule ifa keeps every ifa variant)")] = None,
        table: Annotated[str, typer.Option("--table", "-t", parser=table_name, metavar="<table>", help="which table, by the names under Tables above (all = every table that has data; hashing includes hashing attacks)")] = "all",
        plots: Annotated[bool, typer.Option("--plots/--no-plots", help="with --out: also draw the plots (PNG + SVG + PDF)")] = True,
        eps: Annotated[str | None, typer.Option("--eps", help="the leaderboard's ε, e.g. 0.1 or 8/255 [default: the largest ε every row has]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="the same as --format json (as runs --json and show --json)")] = False,
    ) -> None:

        from ssbench.report import build_report
        from ssbench.store import open_store

        rule, model, dataset = check_filters(rule=rule, model=model, dataset=dataset)
        if as_json:
            if fmt not in ("terminal", "json"):
                from ssbench.errors import SpecError

                raise SpecError(f"--json is --format json; it cannot go with --format {fmt}")
            fmt = "json"
        # machine formats to stdout must stay parseable: no wrapping, no colour, messages on stderr
        piped = fmt != "terminal" and out is None
        console = SafeConsole(soft_wrap=True, color_system=None) if piped else SafeConsole()
        build_report(
            open_store(db, artifacts=artifacts), recipe=recipe, tag=tag, dataset=dataset, model=model, rule=rule, tables=table,
            formats=(fmt,), out=out, plots=plots, console=console, notes=SafeConsole(stderr=True) if piped else None,
            eps=None if eps is None else parse_eps(eps),
        )


def parse_eps(text: str) -> float:
    """'0.1' or '8/255' -> a float (specs.parse_eps_value: finite, >= 0); else a one-line error."""
    from ssbench.errors import SpecError
    from ssbench.specs import parse_eps_value

    try:
        return parse_eps_value(text)
    except ValueError as err:
        raise SpecError(f"--eps: {err}") from None
