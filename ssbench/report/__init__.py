"""Tables and plots rebuilt from the results store alone.

    from ssbench.report import build_report
    build_report(open_store(), recipe="quickstart", formats=("terminal", "markdown"), out="report/")

Library pieces: `registry` (each table's definition: name, title, builder, display, hints; the only
list of table names), `variants` (labels that tell configurations apart, from each run's stored
config), `tables` (pandas frames), `render` (terminal / Markdown / CSV / JSON), `latex` (table floats
for papers), `html` (the whole report as one page), `plots` (matplotlib figures, PNG + SVG + PDF). Every file format renders from the full table;
only the terminal gets narrow variants.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from ssbench.printing import SafeConsole
from ssbench.report.figures import build_plots
from ssbench.report.outdir import check_out_dir
from ssbench.report.registry import REGISTRY, TABLES, Frames, build_tables, display_frame, select, table
from ssbench.report.render import FORMATS, LONG_FORMATS, PAGE_FORMATS, SUFFIX, Format, json_document, render
from ssbench.report.tables import ReportFilter

NARROW_NOTE = " (means only at this terminal width; ± std: --format markdown or csv)"
# each table's title, read from the registry (kept for callers of the old name; prefer table(name).title)
TITLES = {name: t.title for name, t in REGISTRY.items()}


@dataclass
class Report:
    tables: dict[str, pd.DataFrame]
    files: list[Path] = field(default_factory=list)


def _terminal_one(name: str, df: pd.DataFrame, title: str, width: int | None, in_title: tuple[str, ...] = ()) -> Any:
    """The first of: full cells, means only, means only without the table's spare columns, that fits."""
    from ssbench.report.render import fits, to_rich

    hints = table(name).terminal
    tries = [(True, ())]
    if width is not None and hints.narrow:
        tries += [(False, ()), (False, hints.spare)]
    for std, spare in tries:
        shown = display_frame(name, df, std=std, compact=True)
        left_out = [c for c in spare if c in shown.columns]
        shown = _without(shown, (*in_title, *left_out))
        note = "" if std else NARROW_NOTE if not left_out else \
            f" (at this terminal width: means only, without {', '.join(left_out)}; all of it: --format markdown or csv)"
        rich_table = to_rich(shown, title + note, width)
        if width is None or fits(rich_table, width):
            break
    return rich_table


SHOWN_AS = {"epsilon": "ε"}  # long-frame columns the display names otherwise


def _split_title(keys: tuple[str, ...], values: tuple[Any, ...]) -> str:
    if keys == ("model", "dataset"):
        return f"{values[0]} on {values[1]}"
    return ", ".join(f"{SHOWN_AS.get(k, k)} {v:g}" if isinstance(v, float) else f"{SHOWN_AS.get(k, k)} {v}" for k, v in zip(keys, values))


def _without(shown: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """`shown` without the display columns of `columns` (long-frame names; see SHOWN_AS)."""
    names = {SHOWN_AS.get(c, c) for c in columns} | set(columns)
    return shown.drop(columns=[c for c in shown.columns if c in names])


def _fit(name: str, df: pd.DataFrame, title: str, width: int | None, in_title: tuple[str, ...],
         splits: tuple[tuple[str, ...], ...]) -> list[Any]:
    from ssbench.report.render import fits, to_rich

    shown = display_frame(name, df, compact=True)
    natural = to_rich(_without(shown, in_title), title)  # nothing folded
    if width is None or fits(natural, width):
        return [natural]
    if splits and set(splits[0]) <= set(df.columns):
        keys = splits[0]
        # a part's title names all its split-off labels (the full title is printed once above the parts)
        return [t for values, sub in df.groupby(list(keys), sort=False)
                for t in _fit(name, sub, f"{title}, {_split_title(keys, values)}" if in_title else _split_title(keys, values),
                              width, (*in_title, *keys), splits[1:])]
    return [_terminal_one(name, df, title, width, in_title)]


def terminal_tables(name: str, df: pd.DataFrame, title: str, width: int | None) -> list[Any]:
    """What the terminal prints for one table: compact sanity columns; when the table would not fit
    `width`, one table per model x dataset (robust: also per attack) under the full title, and
    means without ± std (without n / epoch columns, text folded) where still too wide. Other
    formats never see these narrow variants."""
    from rich.text import Text

    hints = table(name).terminal
    title += hints.note
    parts = _fit(name, df, title, width, (), hints.splits)
    if len(parts) == 1 and parts[0].title is not None and parts[0].title.startswith(title[:20]):
        return parts
    return [Text(title, style="italic"), *parts]  # the long title once, short ones per part


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
    notes: Console | None = None,
    eps: float | None = None,
) -> Report:
    """Build the tables (and, with `out`, table files + plots). Terminal tables go to `console`; other
    formats go to `<out>/<table>.<md|tex|csv|json>`, or to `console` as text when there is no `out`
    (json: one document {table: rows} for all tables). Messages (no data, failed sanity checks,
    files written) go to `notes` (default: `console`), so a caller piping CSV or JSON to stdout can
    send them to stderr. `eps`: the leaderboard's ε (default: the largest ε every row has)."""
    console = console or SafeConsole()
    notes = notes or console
    check_request(tables, formats)
    if out is None and any(fmt in PAGE_FORMATS for fmt in formats):
        from ssbench.errors import SpecError

        raise SpecError("--format html writes one file with its figures: give --out DIR")
    out_dir = check_out_dir(out) if out is not None else None  # before any table is built
    f = ReportFilter(recipe=recipe, tag=tag, dataset=dataset, model=model, rule=rule)
    frames = Frames(store, f, eps)  # loaded once, for every table
    built = build_tables(store, f, tables, frames=frames)
    report = Report(built)
    if not any(not df.empty for df in built.values()):
        what = ", ".join(f"{k}={v}" for k, v in f.kwargs().items()) or "no filters"
        notes.print(f"[yellow]no finished runs with {tables if tables != 'all' else 'results'} match ({what}); "
                      "see `ssbench runs`[/]")
    for name, df in built.items():
        t = table(name)
        for fmt in formats:
            if df.empty:
                if fmt == "terminal":
                    notes.print(f"[dim]{name}: no data[/]")
                continue
            if fmt == "terminal":
                for part in terminal_tables(name, df, t.title, console.width):
                    console.print(part)
                continue
            if (fmt == "json" and out_dir is None) or fmt in PAGE_FORMATS:
                continue  # one document for all tables, below
            # every file format renders from the full frame: nothing a terminal chose carries over
            shown = df if fmt in LONG_FORMATS else t.show(df, percent=fmt == "latex")  # papers print accuracies in %
            text = render(shown, fmt, title=t.title, table=t)
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                path = out_dir / f"{name}{SUFFIX[fmt]}"
                path.write_text(text, encoding="utf-8")
                report.files.append(path)
            else:
                console.print(text, markup=False, highlight=False, soft_wrap=True)
    if "json" in formats and out_dir is None:
        console.print(json_document(built), markup=False, highlight=False, soft_wrap=True, end="")
    failed = built["sanity"] if "sanity" in built else REGISTRY["sanity"].build(frames)
    if not failed.empty:
        notes.print(f"[bold red]{len(failed)} sanity check(s) failed[/] [red]in {failed['run'].nunique()} attack "
                      "run(s); see `ssbench report --table sanity`. Numbers marked '!' rest on them.[/]")
    if out_dir is not None and plots:
        report.files += build_plots(store, f, out_dir, built, frames=frames)
    if out_dir is not None and "html" in formats:
        report.files.append(_html_page(store, f, out_dir, built, failed, report.files))
    if out_dir is not None and report.files:
        notes.print(f"wrote {len(report.files)} files to {out_dir}")
    elif out_dir is not None and any(not df.empty for df in built.values()):
        # --out was asked for, so say why it stayed empty rather than leave the user looking for files
        why = "no figure has data to draw" if plots else "--no-plots"
        notes.print(f"[yellow]wrote nothing to {out_dir}: terminal tables print here only and {why}; "
                    "--format markdown, latex, csv, json or html write table files[/]")
    return report


def _html_page(store: Any, f: ReportFilter, out_dir: Path, built: dict[str, pd.DataFrame], failed: pd.DataFrame,
               files: list[Path]) -> Path:
    """`<out>/report.html`: every table with data, the SVG figures just written, the failed checks and
    the runs' provenance in one self-contained page."""
    from ssbench.report.html import HtmlTable, write_html
    from ssbench.report.provenance import run_provenance

    out_dir.mkdir(parents=True, exist_ok=True)
    return write_html(
        out_dir / "report.html", title="ssbench report",
        about=", ".join(f"{k}={v}" for k, v in f.kwargs().items()) or "all runs",
        tables=[HtmlTable(n, table(n).title, table(n).show(df)) for n, df in built.items() if n != "sanity" and not df.empty],
        figures=[p for p in files if p.suffix == ".svg"],
        flags=table("sanity").show(failed), runs=run_provenance(store, f))


def check_request(tables: str = "all", formats: Sequence[str] = ()) -> None:
    """One line (SpecError) for an unknown table or format, before anything is opened or built."""
    select(tables)
    for fmt in formats:
        if fmt not in FORMATS:
            from ssbench.errors import SpecError

            raise SpecError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")


__all__ = ["build_report", "build_plots", "check_out_dir", "check_request", "terminal_tables", "Report", "ReportFilter", "REGISTRY",
           "TABLES", "TITLES", "Frames", "build_tables", "display_frame", "json_document", "render", "table", "FORMATS"]
