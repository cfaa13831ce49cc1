"""Render a DataFrame as a rich table (terminal), Markdown, LaTeX (table floats, booktabs), CSV or JSON.

JSON (`to_json_rows`, `json_document`) is the long frame as row objects: the frame's snake_case
columns as keys, numbers as numbers, NaN / missing as null, the comma-separated id lists `runs` and
`seeds` as arrays of integers."""
from __future__ import annotations

import io
import json
import math
from typing import Any, Literal

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssbench.printing import SafeConsole
from ssbench.report.cells import cells, is_numeric_column
from ssbench.report.latex import to_latex

Format = Literal["terminal", "markdown", "latex", "csv", "json", "html"]
FORMATS: tuple[Format, ...] = ("terminal", "markdown", "latex", "csv", "json", "html")
SUFFIX = {"terminal": ".txt", "markdown": ".md", "latex": ".tex", "csv": ".csv", "json": ".json", "html": ".html"}
PAGE_FORMATS = ("html",)  # one file for the whole report (ssbench.report.html), not one per table
LONG_FORMATS = ("csv", "json")  # rendered from the long frame (numbers); the others from the display frame
ID_LISTS = ("runs", "seeds")  # "3,4,5" in a long frame


def to_rich(df: pd.DataFrame, title: str | None = None, width: int | None = None) -> Table:
    """Label and number columns keep their full width (never squeezed to '…'); long free text wraps.
    When the table would not fit `width` columns, text columns wrap too (numbers never do)."""
    rows = cells(df)

    def build(tight: bool) -> Table:
        # titles carry labels like mlp[256x3]: text, not rich markup
        table = Table(title=None if title is None else escape(title), title_justify="left", header_style="bold")
        for j, col in enumerate(df.columns):
            values = [r[j] for r in rows]
            numeric = is_numeric_column(values)
            longest = max([len(str(col)), *map(len, values)])
            widest_value = max([1, *map(len, values)])
            if numeric and tight and " " in str(col):  # the header wraps at its spaces, the numbers never do
                # a fixed width: rich's collapse leaves wrapped columns wider than needed (and crops the edge)
                table.add_column(escape(str(col)), justify="right", overflow="fold",
                                 width=max(widest_value, *map(len, str(col).split())))
            elif numeric or longest <= (12 if tight else 24):
                table.add_column(escape(str(col)), justify="right" if numeric else "left", no_wrap=True, min_width=longest)
            else:  # long text shares what is left, in proportion to its length
                table.add_column(escape(str(col)), overflow="fold", ratio=longest, min_width=min(longest, 10))
        for row in rows:
            table.add_row(*[f"[bold red]{escape(c)}[/]" if c.endswith("!") else escape(c) for c in row])
        return table

    table = build(tight=False)
    return table if width is None or fits(table, width) else build(tight=True)


def fits(table: Table, width: int) -> bool:
    """Whether `table` prints within `width` columns without cropping: its natural width fits, or,
    rendered at `width` (headers wrapped, text folded), its right edge survives (rich's measure can
    be one column short of what wrapping needs, so the rendering is the judge)."""
    probe = SafeConsole(file=io.StringIO(), width=10_000, color_system=None)
    if probe.measure(table).maximum <= width:
        return True
    at = SafeConsole(file=io.StringIO(), width=width, color_system=None)
    at.print(table)
    top = next((ln for ln in at.file.getvalue().splitlines() if ln.startswith("┏")), "")  # type: ignore[attr-defined]
    return top.rstrip().endswith("┓")


def to_markdown(df: pd.DataFrame, title: str | None = None) -> str:
    def esc(s: str) -> str:
        return s.replace("|", r"\|")

    rows = cells(df)
    header = [esc(str(c)) for c in df.columns]
    align = ["---:" if is_numeric_column([r[j] for r in rows]) else ":---" for j in range(len(header))]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join(align) + " |")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def _json_value(column: str, v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_value("", x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value("", x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, str):  # numpy scalars and arrays
        return _json_value(column, v.tolist())
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and not math.isfinite(v)):
        return None  # NaN = missing; no long frame stores an infinity
    if column in ID_LISTS and isinstance(v, str):
        return [int(x) for x in v.split(",") if x.strip()]
    return v


def to_json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The long frame as row objects (see the module docstring)."""
    columns = [str(c) for c in df.columns]
    return [{c: _json_value(c, v) for c, v in zip(columns, row)} for row in df.itertuples(index=False, name=None)]


def json_document(tables: dict[str, pd.DataFrame]) -> str:
    """{table name: its rows}, one JSON document (strict: no NaN literals)."""
    return json.dumps({name: to_json_rows(df) for name, df in tables.items()}, ensure_ascii=False, allow_nan=False, indent=1) + "\n"


def render(df: pd.DataFrame, fmt: Format, *, title: str | None = None, table: Any = None, console: Console | None = None) -> str:
    """The table as text in `fmt`. terminal: printed to `console` when given, and returned as plain text.
    latex: `table` is the registry's definition (label, marks, splits; see `latex.to_latex`).
    csv / json take the long frame, the others its display frame."""
    if fmt == "markdown":
        return to_markdown(df, title)
    if fmt == "latex":
        return to_latex(df, title, table=table)
    if fmt == "csv":
        return to_csv(df)
    if fmt == "json":
        return json.dumps(to_json_rows(df), ensure_ascii=False, allow_nan=False, indent=1) + "\n"
    if fmt == "terminal":
        table = to_rich(df, title, console.width if console is not None else None)
        if console is not None:
            console.print(table)
        plain = SafeConsole(file=io.StringIO(), width=200, color_system=None)
        plain.print(table)
        return plain.file.getvalue()  # type: ignore[attr-defined]
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
