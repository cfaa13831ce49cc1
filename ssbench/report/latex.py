r"""LaTeX tables for papers: `table` floats with caption and `\label{tab:<name>}`, booktabs rules,
numbers right-aligned (accuracies in % where the registry says so; Wilson intervals on a second,
smaller line), every special character escaped, marks explained under the table, and no table
wider than the text: free text wraps in a paragraph column, a wider table is scaled to the text
width (graphicx), one taller than the page to the page.

The preamble needs \usepackage{booktabs,graphicx,array}; each file says so in its first line.
Macros the files share are defined with \providecommand, so any number of them can be \input.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

import pandas as pd

from ssbench.report.cells import cells, is_numeric_column

PACKAGES = ("booktabs", "graphicx", "array")
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 # OT1 fonts print these as other glyphs ('|' as an em dash, '<' as '¡', '"' as a closing quote: the
                 # typewriter font has a straight one); '[' after '\\' would
                 # be read as the row's optional spacing
                 "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}", '"': r"\texttt{\char34}",
                 "[": "{[}", "]": "{]}", "`": r"\textasciigrave{}"}
UNICODE = {"±": r"$\pm$", "×": r"$\times$", "°": r"$^\circ$", "≤": r"$\le$", "≥": r"$\ge$", "≈": r"$\approx$",
           "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``", "”": "''", "…": r"\dots{}", "µ": r"$\mu$",
           "→": r"$\to$", "−": "$-$", "ε": r"$\varepsilon$", "θ": r"$\theta$", "ϑ": r"$\vartheta$", "φ": r"$\varphi$"}
DAGGER = r"$^\dagger$"
LONG_TEXT = 32  # characters: a text column with a longer cell wraps in a paragraph of at most PARAGRAPH_EM
PARAGRAPH_EM = 14

PROLOGUE = r"""% Needs \usepackage{booktabs,graphicx,array} in the preamble.
\ifdefined\ssbenchbox\else\newsavebox{\ssbenchbox}\fi
% a table wider than the text is scaled to the text width; one taller than the page, to the page
\providecommand{\ssbenchfit}[1]{\sbox{\ssbenchbox}{#1}%
  \ifdim\wd\ssbenchbox>\linewidth\sbox{\ssbenchbox}{\resizebox{\linewidth}{!}{\usebox{\ssbenchbox}}}\fi
  \ifdim\dimexpr\ht\ssbenchbox+\dp\ssbenchbox\relax>0.8\textheight
    \sbox{\ssbenchbox}{\resizebox*{!}{0.8\textheight}{\usebox{\ssbenchbox}}}\fi
  \usebox{\ssbenchbox}}
% a number with its interval below it, smaller
\providecommand{\ssbenchcell}[2]{\begin{tabular}[t]{@{}r@{}}#1\\[-1pt]{\scriptsize #2}\end{tabular}}
"""


def _char(ch: str) -> str:
    if ch in LATEX_SPECIAL:
        return LATEX_SPECIAL[ch]
    if ord(ch) < 128:
        return ch
    if ch in UNICODE:
        return UNICODE[ch]
    name = unicodedata.name(ch, "")
    if name.startswith("GREEK SMALL LETTER ") and " WITH " not in name:
        return rf"$\{name.removeprefix('GREEK SMALL LETTER ').lower()}$"
    if "\u00c0" <= ch <= "\u00ff" and ch not in "×÷":  # Latin-1 letters: pdflatex's utf8 input knows them
        return ch
    return rf"\texttt{{U+{ord(ch):04X}}}"  # no glyph in a default pdflatex setup: its code point, never an error


def latex_escape(s: str) -> str:
    """Text as LaTeX that prints it in any font encoding: specials escaped, known Unicode as LaTeX,
    '--' kept as two hyphens (not an en dash)."""
    return "".join("-{}" if ch == "-" and s[i + 1:i + 2] == "-" else _char(ch) for i, ch in enumerate(s))


def _number(cell: str, flags: bool) -> str:
    """A number cell: '!' (failed sanity checks) as a dagger that does not push the digits; a
    '[lo, hi]' interval, or the reason of an 'n/a (why)', on a second line."""
    flag = flags and cell.endswith("!")
    body = cell[:-1] if flag else cell
    m = re.fullmatch(r"(.*?) (\[-?[\d.]+, -?[\d.]+\])(.*)", body) or re.fullmatch(r"(n/a) (\(.*\))()", body)
    first, second = (m[1], m[2] + m[3]) if m else (body, None)
    first = latex_escape(first) + (rf"\rlap{{{DAGGER}}}" if flag else "")
    return rf"\ssbenchcell{{{first}}}{{{latex_escape(second)}}}" if second else first


def _present(marks: dict[str, str], numbers: list[str]) -> list[tuple[str, str]]:
    return [(m, meaning) for m, meaning in marks.items() if any(c == m.strip() or c.endswith(m) for c in numbers)]


def _group_title(keys: list[str], values: tuple[Any, ...]) -> str:
    if keys == ["model", "dataset"]:
        return f"{values[0]} on {values[1]}"
    if keys[:2] == ["model", "dataset"]:
        return f"{values[0]} on {values[1]}, " + ", ".join(f"{k} {v}" for k, v in zip(keys[2:], values[2:]))
    return ", ".join(f"{k} {v}" for k, v in zip(keys, values))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text.replace("θ", "theta")).strip("-")


def _groups(df: pd.DataFrame, keys: tuple[str, ...], own_columns: bool = False) -> list[tuple[list[str], tuple[Any, ...], pd.DataFrame]]:
    """(keys present, their values, rows without those columns) per group, in the frame's order.
    `own_columns`: each group without the columns empty in all its rows (groups that are floats)."""
    present = [k for k in keys if k in df.columns]
    if not present or df[present].drop_duplicates().shape[0] < 2:
        return [([], (), df)]
    return [(present, values if isinstance(values, tuple) else (values,),
             _filled(sub.drop(columns=present)) if own_columns else sub.drop(columns=present))
            for values, sub in df.groupby(present, sort=False)]


def _filled(df: pd.DataFrame) -> pd.DataFrame:
    """Without the columns that are empty in every row (an ε grid another part has and this one lacks)."""
    return df[[c for c in df.columns if any(v != "" for v in df[c].astype(str))]]


def _tabular(df: pd.DataFrame, sections: tuple[str, ...], flags: bool) -> tuple[str, list[str]]:
    """The tabular (sections as heading rows) and the number cells in it (to find the marks)."""
    parts = _groups(df, sections)
    body = parts[0][2]
    rows = cells(body)
    numeric = [is_numeric_column([r[j] for sub in parts for r in cells(sub[2])]) for j in range(len(body.columns))]
    longest = [max([0, *(len(r[j]) for sub in parts for r in cells(sub[2]))]) for j in range(len(body.columns))]
    spec = "".join("r" if num else (rf">{{\raggedright\arraybackslash}}p{{{min(PARAGRAPH_EM, longest[j] // 2)}em}}"
                                    if longest[j] > LONG_TEXT else "l") for j, num in enumerate(numeric))
    lines = [rf"\begin{{tabular}}{{@{{}}{spec}@{{}}}}",
             r"\toprule", " & ".join(latex_escape(str(c)) for c in body.columns) + r" \\", r"\midrule"]
    numbers: list[str] = []
    for i, (keys, values, sub) in enumerate(parts):
        if keys:
            if i:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{len(body.columns)}}}{{@{{}}l}}{{\emph{{{latex_escape(_group_title(keys, values))}}}}} \\")
        rows = cells(sub)
        for r in rows:
            numbers += [c for c, num in zip(r, numeric) if num]
            lines.append(" & ".join(_number(c, flags) if num else latex_escape(c) for c, num in zip(r, numeric)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\\ssbenchfit{%\n" + "\n".join(lines) + "}", numbers


def to_latex(df: pd.DataFrame, title: str | None = None, *, table: Any = None) -> str:
    """`df` (a display frame) as LaTeX table floats. `table`: its `ssbench.report.registry.Table`,
    which gives the label (tab:<name>), the marks to explain, whether accuracies are in %, and how
    to split (`latex.floats`: one float per value; `latex.sections`: heading rows) and what papers
    leave out (`latex.drop`). Without it: one float, no label, '!' as a dagger."""
    name = getattr(table, "name", None)
    hints = getattr(table, "latex", None)
    marks: dict[str, str] = getattr(table, "marks", None) or {"!": "rests on failed sanity checks"}
    dropped = [c for c in (hints.drop if hints else ()) if c in df.columns]
    df = df.drop(columns=dropped)
    caption = latex_escape(title or "").replace(r"'!'", DAGGER)
    caption += "" if not caption or caption.endswith(".") else "."
    after = r" Accuracies in \%." if getattr(table, "percent", False) else ""
    if dropped:
        after += " Left out here: " + latex_escape(", ".join(dropped)) + " (see the CSV or Markdown table)."
    short = latex_escape(re.split(r" \(|: |; ", title or "")[0])
    out = [f"% ssbench report table{f' {name}' if name else ''}", PROLOGUE.rstrip()]
    floats = _groups(_filled(df), hints.floats if hints else (), own_columns=True)
    for i, (keys, values, sub) in enumerate(floats):
        tabular, numbers = _tabular(sub, hints.sections if hints else (), "!" in marks)
        where = latex_escape(_group_title(keys, values)) if keys else ""
        if i == 0:
            cap = caption + (f" This table: {where}." if where else "") + after
        else:
            cap = rf"As Table~\ref{{tab:{name}}}, for {where}." if name else where
        labels = ([rf"\label{{tab:{name}}}"] if name and i == 0 else []) + \
                 ([rf"\label{{tab:{name}:{_slug('-'.join(map(str, values)))}}}"] if name and keys else [])
        out += [r"\begin{table}[htbp]", r"\centering\small",
                (rf"\caption[{short}{f': {where}' if where else ''}]{{{cap}}}" if title else "") + "".join(labels),
                tabular]
        notes = [(DAGGER if m == "!" else latex_escape(m.strip())) + " = " + latex_escape(meaning)
                 for m, meaning in _present(marks, numbers)]
        if notes:
            out.append(r"\par\smallskip{\footnotesize " + "; ".join(notes) + r".\par}")
        out.append(r"\end{table}")
    return "\n".join(out) + "\n"


__all__ = ["PACKAGES", "latex_escape", "to_latex"]
