"""Tables and plots rebuilt from the results store alone.

    from ssbench.report import build_report
    build_report(open_store(), recipe="quickstart", formats=("terminal", "markdown"), out="report/")

Library pieces: `tables` (pandas frames), `render` (terminal / Markdown / LaTeX / CSV), `plots`
(matplotlib figures, PNG + SVG).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from ssbench.report.render import FORMATS, SUFFIX, Format, render
from ssbench.report.tables import TABLES, ReportFilter, alignment_curves, build_tables, display_frame

TITLES = {
    "clean": "Clean test accuracy (mean ± std over seeds; n = runs)",
    "robust": "Robust accuracy per attack x gradient mode x ε (mean ± std over seeds; worst = per-example worst case over modes; '!' = failed sanity checks)",
    "alignment": "Alignment at the last epoch: angle(W, B) in degrees and |B| / |W| per layer",
    "hashing": "Hashing: clean retrieval mAP per rule x bits",
    "hashing_attacks": "Hashing: mAP under attack per gradient mode x ε",
    "sanity": "FAILED sanity checks (robustness claims above that depend on these are not supported)",
}


@dataclass
class Report:
    tables: dict[str, pd.DataFrame]
    files: list[Path] = field(default_factory=list)


def _slug(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.@-]+", "-", str(p)).strip("-") for p in parts if p is not None and str(p))


def build_plots(store: Any, f: ReportFilter, out: Path, tables: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """Robustness curves per model x dataset x metric, alignment over epochs, training curves."""
    from ssbench.report import plots
    from ssbench.report.tables import robust_table

    files: list[Path] = []
    robust = robust_table(store, f)
    if not robust.empty:
        for (model, dataset, metric), sub in robust.groupby(["model", "dataset", "metric"], sort=False, dropna=False):
            fig = plots.plot_robustness(sub, title=f"{model} on {dataset}")
            files += plots.save_figure(fig, out, _slug("robust", model, dataset, None if metric == "accuracy" else metric))
    curves = alignment_curves(store, f)
    if not curves.empty:
        for (model, dataset), sub in curves.groupby(["model", "dataset"], sort=False, dropna=False):
            fig = plots.plot_alignment(sub, title=f"alignment of the feedback weights: {model} on {dataset}")
            files += plots.save_figure(fig, out, _slug("alignment", model, dataset))
    metrics = store.frame_metrics(status="finished", **f.kwargs())
    if not metrics.empty:
        for (kind, model, dataset), sub in metrics.groupby(["kind", "model", "dataset"], sort=False, dropna=False):
            fig = plots.plot_training(sub, title=f"{kind} curves: {model} on {dataset}")
            files += plots.save_figure(fig, out, _slug("training", kind, model, dataset))
    return files


def build_report(
    store: Any,
    *,
    recipe: str | None = None,
    tag: str | None = None,
    dataset: str | None = None,
    model: str | None = None,
    rule: str | None = None,
    tables: str = "all",
    formats: Sequence[Format] = ("terminal",),
    out: str | Path | None = None,
    plots: bool = True,
    console: Console | None = None,
) -> Report:
    """Build the tables (and, with `out`, table files + plots). Terminal tables go to `console`; other
    formats go to `<out>/<table>.<md|tex|csv>`, or to `console` as text when there is no `out`."""
    console = console or Console()
    if tables != "all" and tables not in TABLES:
        from ssbench.errors import SpecError

        raise SpecError(f"unknown table {tables!r}; choose from: {', '.join(('all', *TABLES))}")
    for fmt in formats:
        if fmt not in FORMATS:
            from ssbench.errors import SpecError

            raise SpecError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    f = ReportFilter(recipe=recipe, tag=tag, dataset=dataset, model=model, rule=rule)
    built = build_tables(store, f, tables)
    report = Report(built)
    out_dir = Path(out) if out is not None else None
    if not any(not df.empty for df in built.values()):
        what = ", ".join(f"{k}={v}" for k, v in f.kwargs().items()) or "no filters"
        console.print(f"[yellow]no finished runs with {tables if tables != 'all' else 'results'} match ({what}); "
                      "see `ssbench runs`[/]")
    for name, df in built.items():
        title = TITLES.get(name, name)
        shown = display_frame(name, df)
        for fmt in formats:
            if df.empty:
                if fmt == "terminal":
                    console.print(f"[dim]{name}: no data[/]")
                continue
            if fmt == "terminal":
                from ssbench.report.render import fits, to_rich

                table = to_rich(shown, title)
                if name in ("robust", "hashing_attacks") and not fits(table, console.width):
                    shown = display_frame(name, df, std=False)
                    title += " (means only at this terminal width; ± std: --format markdown or csv)"
                table = to_rich(shown, title, console.width)
                console.print(table)
                continue
            text = render(df if fmt == "csv" else shown, fmt, title=title)
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                path = out_dir / f"{name}{SUFFIX[fmt]}"
                path.write_text(text, encoding="utf-8")
                report.files.append(path)
            else:
                console.print(text, markup=False, highlight=False, soft_wrap=True)
    failed = built.get("sanity")
    if failed is None:
        from ssbench.report.tables import sanity_table

        failed = sanity_table(store, f)
    if not failed.empty:
        console.print(f"[bold red]{len(failed)} sanity check(s) failed[/] [red]in {failed['run'].nunique()} attack "
                      "run(s); see `ssbench report --table sanity`. Numbers marked '!' rest on them.[/]")
    if out_dir is not None and plots:
        report.files += build_plots(store, f, out_dir, built)
    if out_dir is not None and report.files:
        console.print(f"wrote {len(report.files)} files to {out_dir}")
    return report


__all__ = ["build_report", "build_plots", "Report", "ReportFilter", "build_tables", "display_frame", "render", "FORMATS"]
