"""Sampling error of an accuracy measured on n examples: the Wilson 95% score interval.

An accuracy k / n over n test examples is a binomial proportion; with n = 100 and 0.5 its 95%
interval is about ±0.1, so two robust accuracies 0.05 apart on 100 examples are not told apart.
The Wilson score interval (Wilson 1927) inverts the score test: the p with |k/n - p| <= z sqrt(p (1 - p) / n).
Unlike the Wald interval (p ± z sqrt(p (1 - p) / n)) it stays inside [0, 1] and does not collapse to a
point at k = 0 or k = n, where robust accuracies often sit. mAP is not a proportion of examples: none.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson(k: Any, n: Any, z: float = Z95) -> tuple[Any, Any]:
    """Wilson score interval (lo, hi) of k successes in n trials (scalars or arrays); NaN where n <= 0."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def successes(accuracy: Any, n: Any) -> Any:
    """k of an accuracy stored as a float over n examples (k / n rounds back exactly)."""
    return np.rint(np.asarray(accuracy, dtype=float) * np.asarray(n, dtype=float))


def interval_text(lo: Any, hi: Any, digits: int = 3) -> str:
    """'[0.468, 0.556]', or '' when there is no interval (mAP, no n)."""
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)) or (isinstance(hi, float) and math.isnan(hi)):
        return ""
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"
