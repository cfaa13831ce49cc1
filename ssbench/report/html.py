"""The report as one self-contained HTML file: tables, inline SVG figures, failed sanity checks and
each run's provenance, readable offline in any browser (no scripts, no external URLs, CSS inline).

    write_html(out / "report.html", title="ssbench report", tables=[HtmlTable(name, title, display_frame(...))],
               figures=[... .svg paths], flags=display_frame("sanity", failed), runs=run_provenance(store, f))

Tables arrive as display frames (strings, as `display_frame` makes them): this module only lays
them out. Every piece of text is escaped; figures are inlined with their ids prefixed per figure
(matplotlib reuses ids such as "patch_1" and clip paths across files, and one page must not).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import pandas as pd

from ssbench.report.cells import cells, is_numeric_column
from ssbench.report.provenance import RunProvenance

FLAG_NOTE = "'!' = the number rests on failed sanity checks"


@dataclass(frozen=True)
class HtmlTable:
    """One table: `name` (its anchor and contents entry), `title` (the caption saying what the
    numbers are), `frame` (display strings) and optional `notes` printed under it."""

    name: str
    title: str
    frame: pd.DataFrame
    notes: str = ""


CSS = """
:root { color-scheme: light; --line: #d0d4da; --muted: #5b6470; --flag: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 1rem 1.5rem 3rem; font: 15px/1.45 system-ui, -apple-system,
  "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d232b; background: #fff; }
h1 { font-size: 1.6rem; margin: .5rem 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .4rem; padding-top: .4rem; border-top: 1px solid var(--line); }
a { color: #0b57d0; }
.about, .caption, .note, figcaption { color: var(--muted); }
.caption { margin: 0 0 .5rem; max-width: 75rem; }
.note { font-size: .85rem; margin: .4rem 0 0; }
nav.toc ol { margin: .25rem 0; padding-left: 1.4rem; columns: 2 18rem; }
.alert { color: var(--flag); font-weight: 600; }
.ok { color: #1e7b34; }
.scroll { overflow-x: auto; width: fit-content; max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { padding: .25rem .55rem; border-bottom: 1px solid #eceef1; text-align: left; vertical-align: top; white-space: nowrap; }
th { background: #f3f5f8; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef4ff; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.flag { color: var(--flag); }
td.text { white-space: normal; min-width: 14rem; }  /* long free text wraps, labels never do */
figure { margin: 1.2rem 0; }
.svg { overflow-x: auto; }
.svg svg { display: block; max-width: 100%; height: auto; }
details summary { cursor: pointer; color: #0b57d0; white-space: nowrap; }
details pre { margin: .3rem 0 0; max-height: 24rem; max-width: 60rem; overflow: auto; background: #f6f8fa;
  padding: .5rem; font-size: .8rem; }
code { font-size: .85em; }
"""


def _table_html(frame: pd.DataFrame, name: str) -> str:
    """`frame` as an HTML table inside a horizontally scrolling box: number columns right-aligned,
    '!' cells marked (and explained in their title)."""
    rows = cells(frame)
    numeric = [is_numeric_column([r[j] for r in rows]) for j in range(len(frame.columns))]
    head = "".join(f'<th scope="col"{" class=num" if num else ""}>{escape(str(c))}</th>'
                   for c, num in zip(frame.columns, numeric))
    body = []
    for row in rows:
        tds = []
        for cell, num in zip(row, numeric):
            flagged = cell.endswith("!")
            cls = " ".join(c for c in ("num" if num else "text" if len(cell) > 30 else "", "flag" if flagged else "") if c)
            attrs = (f' class="{cls}"' if cls else "") + (f' title="{escape(FLAG_NOTE)}"' if flagged else "")
            tds.append(f"<td{attrs}>{escape(cell)}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (f'<div class="scroll"><table data-name="{escape(name)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{chr(10).join(body)}\n</tbody></table></div>")


def _has_flags(frame: pd.DataFrame) -> bool:
    return any(c.endswith("!") for row in cells(frame) for c in row)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


# -- figures --------------------------------------------------------------------------------------

_PROLOG = re.compile(r"<\?xml.*?\?>|<!DOCTYPE[^>\[]*(\[.*?\])?\s*>|<!--.*?-->|<metadata\b.*?</metadata>", re.S | re.I)
_ID = re.compile(r'(?<![\w:-])id="([^"]+)"')
_REF = re.compile(r'((?<![\w:-])id="|url\(#|\bhref="#)([^")]+)')
_STYLE = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.S)


def _scope_css(css: str, scope: str) -> str:
    """Each selector of `css` limited to `#scope` (matplotlib's `*{stroke-linejoin: ...}` would
    otherwise style the whole page)."""
    def rule(m: re.Match[str]) -> str:
        selectors = ", ".join(f"#{scope} {s.strip()}" for s in m.group(1).split(",") if s.strip())
        return f"{selectors} {{"

    return re.sub(r"([^{}]+)\{", rule, css)


def inline_svg(text: str, prefix: str) -> str:
    """An SVG file's text, ready to sit inside an HTML page: no XML prolog, doctype, comments or
    metadata; every id (and each reference to one: url(#id), href="#id") prefixed with `prefix-`;
    its style sheet scoped to the element with id `prefix` (the caller's wrapper)."""
    body = _PROLOG.sub("", text).strip()
    if not body.startswith("<svg"):
        raise ValueError(f"not an SVG document (starts with {body[:40]!r})")
    ids = set(_ID.findall(body))

    def ref(m: re.Match[str]) -> str:
        return f"{m.group(1)}{prefix}-{m.group(2)}" if m.group(2) in ids else m.group(0)

    body = _REF.sub(ref, body)
    return _STYLE.sub(lambda m: m.group(1) + _scope_css(m.group(2), prefix) + m.group(3), body)


def _figure_html(path: Path, index: int) -> str:
    if path.suffix.lower() != ".svg":
        raise ValueError(f"HTML figures are inline SVG; got {path}")
    scope = f"fig{index}-{_slug(path.stem)}"
    svg = inline_svg(path.read_text(encoding="utf-8"), scope)
    # the caption is the file stem: the .png / .pdf of the same figure sit beside it under that name
    return (f'<figure id="{escape(scope)}"><div class="svg">{svg}</div>'
            f"<figcaption>{escape(path.stem)}</figcaption></figure>")


# -- runs -----------------------------------------------------------------------------------------

def _common(values: list[dict[str, str]]) -> dict[str, str]:
    """The key: value pairs every run shares."""
    if not values:
        return {}
    first = values[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in values[1:])}


def _utc(t: datetime) -> datetime:
    """The store writes UTC; SQLite hands it back without a zone."""
    return t if t.tzinfo is None else t.astimezone(timezone.utc)


def _runs_html(runs: Sequence[RunProvenance]) -> str:
    # what every run shares is said once above the table, not repeated on each row
    versions = _common([r.versions for r in runs]) if all(r.versions for r in runs) else {}
    same = {k: getattr(runs[0], a) for k, a in (("commit", "git_commit"), ("device", "device"), ("host", "host"))
            if getattr(runs[0], a) is not None and all(getattr(r, a) == getattr(runs[0], a) for r in runs)}
    shared = [f"{escape(k)} <code>{escape(v)}</code>" for k, v in same.items()]
    if versions:
        shared.append("versions " + " ".join(f"<code>{escape(k)} {escape(v)}</code>" for k, v in versions.items()))
    lines = [f'<p class="note">Every run: {"; ".join(shared)}</p>' if shared else ""]
    columns = {  # header -> cell text of one run; a column no run has a value for is left out
        "run": lambda r: str(r.id), "kind": lambda r: r.kind, "rule": lambda r: r.rule or "",
        "model": lambda r: r.model or "", "dataset": lambda r: r.dataset or "",
        "seed": lambda r: "" if r.seed is None else str(r.seed), "parent": lambda r: "" if r.parent is None else str(r.parent),
        "recipe": lambda r: r.recipe or "", "tags": lambda r: ", ".join(r.tags),
        "commit": lambda r: "" if "commit" in same else r.git_commit or "",
        "versions": lambda r: ", ".join(f"{k} {v}" for k, v in r.versions.items() if versions.get(k) != v),
        "device": lambda r: "" if "device" in same else r.device or "", "host": lambda r: "" if "host" in same else r.host or "",
        "started (UTC)": lambda r: "" if r.started is None else _utc(r.started).strftime("%Y-%m-%d %H:%M"),
        "seconds": lambda r: "" if r.seconds is None else f"{r.seconds:.1f}" if r.seconds < 100 else f"{r.seconds:.0f}",
    }
    shown = {h: [get(r) for r in runs] for h, get in columns.items()}
    shown = {h: v for h, v in shown.items() if any(v)}
    numeric = {"run", "seed", "parent", "seconds"}
    head = "".join(f'<th scope="col"{" class=num" if h in numeric else ""}>{escape(h)}</th>' for h in shown) + \
        '<th scope="col">config</th>'
    body = []
    for i, r in enumerate(runs):
        tds = "".join(f'<td{" class=num" if h in numeric else ""}>{escape(v[i])}</td>' for h, v in shown.items())
        config = json.dumps(r.config, indent=2, sort_keys=True, default=str)
        label = f"config {r.config_hash[:12]}" if r.config_hash else "config"
        tds += f"<td><details><summary>{escape(label)}</summary><pre>{escape(config)}</pre></details></td>"
        body.append(f'<tr id="run-{r.id}">{tds}</tr>')
    lines.append(f'<div class="scroll"><table data-name="runs"><thead><tr>{head}</tr></thead>'
                 f"<tbody>\n{chr(10).join(body)}\n</tbody></table></div>")
    return "\n".join(line for line in lines if line)


# -- the page -------------------------------------------------------------------------------------

def render_html(*, title: str, tables: Sequence[HtmlTable], figures: Sequence[Path] = (),
                flags: pd.DataFrame | None = None, runs: Sequence[RunProvenance] = (), about: str = "") -> str:
    """The whole page as text. `flags`: the failed sanity checks (display frame; None leaves the
    section out, empty says none failed); `runs`: provenance records (`run_provenance`); `about`:
    one line under the title (e.g. the filters)."""
    toc: list[tuple[str, str]] = []
    parts: list[str] = []
    if flags is not None:
        toc.append(("flags", f"Sanity flags ({len(flags)} failed)" if len(flags) else "Sanity flags (none failed)"))
        if len(flags):
            n_runs = flags["run"].nunique() if "run" in flags.columns else None
            where = f" in {n_runs} attack run(s)" if n_runs is not None else ""
            parts.append(f'<section id="flags"><h2>Sanity flags</h2><p class="alert">{len(flags)} sanity check(s) '
                         f"failed{where}; robustness numbers marked '!' rest on them and are not supported.</p>"
                         f"{_table_html(flags, 'flags')}</section>")
        else:
            parts.append('<section id="flags"><h2>Sanity flags</h2><p class="ok">No sanity check failed.</p></section>')
    for t in tables:
        anchor = f"table-{_slug(t.name)}"
        toc.append((anchor, t.name))
        html = [f'<section id="{anchor}"><h2>{escape(t.name)}</h2><p class="caption">{escape(t.title)}</p>']
        if t.frame.empty:
            html.append('<p class="note">no data</p>')
        else:
            html.append(_table_html(t.frame, t.name))
            html.append(f'<p class="note">{len(t.frame)} row(s)</p>')
            if _has_flags(t.frame):
                see = ' (see <a href="#flags">Sanity flags</a>)' if flags is not None else ""
                html.append(f'<p class="note">{escape(FLAG_NOTE)}{see}</p>')
        if t.notes:
            html.append(f'<p class="note">{escape(t.notes)}</p>')
        parts.append("".join(html) + "</section>")
    if figures:
        toc.append(("figures", f"Figures ({len(figures)})"))
        parts.append('<section id="figures"><h2>Figures</h2>' + "\n".join(_figure_html(Path(p), i) for i, p in enumerate(figures))
                     + "</section>")
    if runs:
        toc.append(("runs", f"Runs ({len(runs)}): configuration, seed, commit, versions"))
        parts.append('<section id="runs"><h2>Runs</h2><p class="caption">Provenance of every run behind this report, as stored: '
                     "configuration, seed, git commit (-dirty: uncommitted changes), package versions, where and when it ran.</p>"
                     f"{_runs_html(runs)}</section>")
    nav = "".join(f'<li><a href="#{escape(a)}">{escape(text)}</a></li>'
                  for a, text in toc)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><header><h1>{escape(title)}</h1>"
            + (f'<p class="about">{escape(about)}</p>' if about else "")
            + f'</header>\n<nav class="toc" aria-label="contents"><h2>Contents</h2><ol>{nav}</ol></nav>\n<main>\n'
            + "\n".join(parts) + "\n</main></body></html>\n")


def write_html(path: str | Path, *, title: str, tables: Sequence[HtmlTable], figures: Sequence[Path] = (),
               flags: pd.DataFrame | None = None, runs: Sequence[RunProvenance] = (), about: str = "") -> Path:
    """Write `render_html(...)` to `path` (UTF-8) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title=title, tables=tables, figures=figures, flags=flags, runs=runs, about=about),
                    encoding="utf-8")
    return path
