"""A frame's cells as text, and which columns hold numbers: what every table format aligns by."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def blank(v: Any) -> bool:
    """An empty cell: None, NaN or ''."""
    return v is None or (isinstance(v, float) and np.isnan(v)) or v == ""


def cells(df: pd.DataFrame) -> list[list[str]]:
    return [["" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v) for v in row]
            for row in df.itertuples(index=False, name=None)]


def is_numeric_column(values: list[str]) -> bool:
    """Numbers, possibly with ' ± std', ' [lo, hi]' and a '!' flag; 'n/a (why)' and '-' cells are
    missing numbers, not text."""
    filled = [v.rstrip("!") for v in values if v and not v.startswith("n/a") and v != "-"]
    if not filled:  # a column of missing numbers only ('-' = not run) is still a number column
        return any(v == "-" or v.startswith("n/a") for v in values)
    ok = 0
    for v in filled:
        try:
            float(v.split(" ")[0])
            ok += 1
        except ValueError:
            pass
    return ok == len(filled)
