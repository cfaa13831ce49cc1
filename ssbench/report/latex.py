"""LaTeX tables for papers (booktabs)."""
from __future__ import annotations

import pandas as pd

from ssbench.report.cells import cells, is_numeric_column


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in s)
    # rule labels carry θ (ifa(θ=30)); pdflatex has no glyph for the Unicode letters
    return out.replace("±", r"$\pm$").replace("θ", r"$\theta$").replace("ε", r"$\varepsilon$")


def to_latex(df: pd.DataFrame, title: str | None = None) -> str:
    """A booktabs tabular (\\usepackage{booktabs}); wrap it in a table float yourself."""
    rows = cells(df)
    spec = "".join("r" if is_numeric_column([r[j] for r in rows]) else "l" for j in range(len(df.columns)))
    lines = [f"% {title}" if title else "% ssbench table", f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(str(c)) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
