"""Each report table's long frame as strings for humans ("0.912 ± 0.004"): the terminal, Markdown,
LaTeX and HTML show these; CSV and JSON print the long frames of `ssbench.report.tables` as they are.

Each table's display function (registered in ssbench.report.registry) takes the long frame and
std=True (False: means only, for narrow terminals), compact=False (True: the terminal's form),
percent=False (True: accuracies in % with one decimal, as papers print them; LaTeX) and returns
strings for humans. Every display accepts all three keywords, whether or not it uses them.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from ssbench.report.cells import blank
from ssbench.report.stats import interval_text
from ssbench.report.sweeps import WORST_ALL
from ssbench.report.tables import metric_order, run_list, sort_rows


def label_strings(df: pd.DataFrame) -> pd.DataFrame:
    """bits as '32' / '', variant '' for none: pivot and display need non-NaN keys."""
    df = df.copy()
    if "bits" in df.columns:
        df["bits"] = ["" if blank(v) else str(int(v)) for v in df["bits"]]
    for c in ("variant", "setting"):
        if c in df.columns:
            df[c] = ["" if blank(v) else str(v) for v in df[c]]
    return df


def drop_uninformative(df: pd.DataFrame, constant: tuple[str, ...] = ()) -> list[str]:
    """Label columns a display can leave out: bits / variant / setting when empty everywhere, `constant`
    ones when they hold a single value."""
    drop = [c for c in ("bits", "variant", "setting") if c in df.columns and all(blank(v) for v in df[c])]
    drop += [c for c in constant if c in df.columns and c not in drop and df[c].nunique(dropna=False) == 1]
    return drop


def robust_cell(mean: Any, std: Any, lo: Any, hi: Any, failed: Any, note: Any, full: bool, percent: bool = False) -> str:
    """'0.512 ± 0.020 [0.468, 0.556]!': mean ± std over seeds, the Wilson 95% interval of the pooled
    examples, '!' = failed sanity checks behind it; 'n/a (why)' where a worst case cannot be formed.
    `full=False`: the mean alone, 'n/a' alone (narrow terminals). `percent`: '51.2 ± 2.0 [46.8, 55.6]'."""
    flag = "!" if not blank(failed) and failed else ""
    if mean is None or pd.isna(mean):
        if not (isinstance(note, str) and note):
            return ""
        return (note if full else note.split(" ")[0]) + flag  # narrow: 'n/a', the reason is in the files
    text = _acc(mean, std if full else None, percent)
    interval = (interval_text(_x100(lo), _x100(hi), 1) if percent else interval_text(lo, hi)) if full else ""
    return f"{text} {interval}{flag}" if interval else text + flag


def robust_wide(df: pd.DataFrame, *, std: bool = True, runs: bool = True, percent: bool = False) -> pd.DataFrame:
    """Display form of `robust_table`: one row per variant x attack x setting x mode, one column per
    epsilon (cells: see `robust_cell`), then the attack runs behind the row (`runs=False`: left out,
    as the terminal does). `std=False`: means only (narrow terminals); `percent`: see `_acc`."""
    if df.empty:
        return pd.DataFrame()
    df = label_strings(df)
    get = lambda c: df[c] if c in df.columns else [None] * len(df)  # noqa: E731  `ssbench show` passes bare sweep rows
    df["cell"] = [robust_cell(m, s, lo, hi, fc, note, std, percent) for m, s, lo, hi, fc, note in
                  zip(df["robust_mean"], get("robust_std"), get("robust_lo"), get("robust_hi"), df["failed_checks"], get("note"))]
    df["eps"] = [eps_label(e, norm) for e, norm in zip(df["epsilon"], df["norm"])]
    index = ["kind", "model", "dataset", "bits", "attack", "setting", "metric", "rule", "variant", "mode"]
    drop = drop_uninformative(df, ("kind", "model", "dataset", "metric"))
    index = [c for c in index if c in df.columns and c not in drop]
    order = list(dict.fromkeys(df.sort_values(["norm", "epsilon"])["eps"]))
    wide = df.pivot_table(index=index, columns="eps", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=order).reset_index()
    wide.columns.name = None
    if runs and "runs" in df.columns:
        behind = df.groupby(index, sort=False)["runs"].agg(run_list).reset_index()
        wide = wide.merge(behind, on=index, how="left")
    wide["_last"] = (wide["attack"] == WORST_ALL[0]).astype(int) if "attack" in wide.columns else 0
    wide = sort_rows(wide, ["kind", "model", "dataset", "bits", "_last", "attack", "setting", "metric", "rule", "variant", "mode"])
    return wide.drop(columns="_last").fillna("")


def eps_label(e: float, norm: Any) -> str:
    """'0.03' for decimal grids, '8/255' for the CIFAR-style grid, '3px' for l0 budgets."""
    if norm == "l0":
        return f"{int(e)}px"
    k = e * 255
    # eps are stored rounded to EPS_DECIMALS: 4/255 comes back as 0.01568627, i.e. 3.9999989 / 255
    if e > 0 and abs(k - round(k)) < 1e-4 and abs(e * 100 - round(e * 100)) > 1e-6:
        return f"{int(round(k))}/255"
    return f"{e:g}"


def hashing_wide(df: pd.DataFrame, *, std: bool = True, **_: Any) -> pd.DataFrame:
    """Display form of `hashing_table`: one row per variant (bits included), one column per metric."""
    if df.empty:
        return pd.DataFrame()
    df = label_strings(df)
    df["cell"] = [_pm(m, s if std else None) for m, s in zip(df["value_mean"], df["value_std"])]
    index = [c for c in ("kind", "model", "dataset", "bits", "rule", "variant")
             if c not in drop_uninformative(df, ("kind",))]
    metrics = sorted(set(df["metric"]), key=metric_order)
    return _wide_cells(df, index, "metric", metrics)


def corruption_wide(df: pd.DataFrame, *, std: bool = True, percent: bool = False, **_: Any) -> pd.DataFrame:
    """Display form of `corruption_table`: one row per variant x corruption, columns clean, severities,
    mean ('all' rows: means over corruptions; its mean is the mCA)."""
    if df.empty:
        return pd.DataFrame()
    df = label_strings(df)
    df["col"] = ["mean" if pd.isna(s) else ("clean" if c == "none" else str(int(s)))
                 for c, s in zip(df["corruption"], df["severity"])]
    df.loc[df["corruption"] == "none", "corruption"] = "all"  # clean sits in the 'all' row
    df["cell"] = [_acc(m, s if std else None, percent) for m, s in zip(df["accuracy_mean"], df["accuracy_std"])]
    index = [c for c in ("kind", "model", "dataset", "bits", "rule", "variant", "corruption")
             if c not in drop_uninformative(df, ("kind", "model", "dataset"))]
    sev = sorted({int(s) for s in df["severity"].dropna() if int(s) > 0})
    columns = [c for c in ("clean", *map(str, sev), "mean") if c in set(df["col"])]
    return _wide_cells(df, index, "col", columns)


def _wide_cells(df: pd.DataFrame, index: list[str], key: str, columns: list[str]) -> pd.DataFrame:
    """Pivot the formatted 'cell' column to one column per `key` value (in `columns` order), plus n."""
    wide = df.pivot_table(index=index, columns=key, values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=columns).reset_index()
    wide.columns.name = None
    n = df.groupby(index, sort=False)["n"].max().reset_index()
    wide = wide.merge(n, on=index)
    wide["n"] = wide["n"].astype(int).astype(str)
    return wide.fillna("")


def trainability_wide(df: pd.DataFrame, *, std: bool = True, percent: bool = False, **_: Any) -> pd.DataFrame:
    """Display form of `trainability_table`: the map itself, one row per configuration x feedback
    variance, one column per weight variance; 'x' = a seed's loss turned non-finite."""
    if df.empty:
        return pd.DataFrame()
    df = label_strings(df)
    df["cell"] = [_acc(m, s if std else None, percent) + (" x" if k else "")
                  for m, s, k in zip(df["accuracy_mean"], df["accuracy_std"], df["nonfinite"])]
    df["feedback var"] = [f"{v:g}" for v in df["feedback_var"]]
    df["col"] = [f"weight var {v:g}" for v in df["weight_var"]]
    index = [c for c in ("kind", "model", "dataset", "bits", "rule", "variant", "feedback var")
             if c not in drop_uninformative(df, ("kind",))]
    columns = [f"weight var {v:g}" for v in sorted(set(df["weight_var"]))]
    return _wide_cells(df, index, "col", columns)


SANITY_COMPACT = ["run", "rule", "check", "attack", "mode", "value"]


def _pm(mean: Any, std: Any, digits: int = 3) -> str:
    if mean is None or pd.isna(mean):
        return ""
    if std is None or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _x100(v: Any) -> Any:
    return None if v is None else v * 100


def _acc(mean: Any, std: Any, percent: bool = False) -> str:
    """An accuracy (a proportion): '0.912 ± 0.004', or with `percent` '91.2 ± 0.4'."""
    return _pm(_x100(mean), _x100(std), 1) if percent else _pm(mean, std, 3)


def _sig(mean: Any, std: Any) -> str:
    """4 significant digits for quantities without a natural scale (curvature)."""
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:.4g}" + ("" if std is None or pd.isna(std) else f" ± {std:.2g}")


MERGED = {  # prefix of <prefix>_mean / _std -> (digits of "mean ± std", None = 4 significant, "acc" = see _acc; display header)
    "accuracy": ("acc", "accuracy"), "angle_initial": (1, "angle init"), "angle_final": (1, "angle final"),
    "norm_ratio_initial": (2, "|B|/|W| init"), "norm_ratio_final": (2, "|B|/|W| final"),
    "grad_angle_final": (1, "grad angle final"), "trace": (None, "trace"), "top_eig": (None, "top eigenvalue"),
    "loss": (3, "loss"),
}


def _merged(digits: Any, mean: Any, std: Any, percent: bool) -> str:
    if digits == "acc":
        return _acc(mean, std, percent)
    return _sig(mean, std) if digits is None else _pm(mean, std, digits)


def long_display(df: pd.DataFrame, *, std: bool = True, percent: bool = False, keep_kind: bool = False, **_: Any) -> pd.DataFrame:
    """The display of a table that keeps its long rows: labels as strings, <x>_mean / <x>_std merged
    into 'mean ± std' (MERGED), counts as integers. `keep_kind`: keep a single-valued kind column."""
    if df.empty:
        return df
    out = label_strings(df)
    out = out.drop(columns=drop_uninformative(out, () if keep_kind else ("kind",)))
    if "variant" in out.columns and "rule" in out.columns:  # a rule's variant reads next to it
        cols = [c for c in out.columns if c != "variant"]
        cols.insert(cols.index("rule") + 1, "variant")
        out = out[cols]
    for prefix, (digits, header) in MERGED.items():
        m, s = f"{prefix}_mean", f"{prefix}_std"
        if m in out.columns:
            pos = list(out.columns).index(m)
            sd = out[s] if s in out.columns and std else [None] * len(out)
            merged = [_merged(digits, a, b, percent) for a, b in zip(out[m], sd)]
            out = out.drop(columns=[c for c in (m, s) if c in out.columns])
            out.insert(pos, header, merged)
    for c in ("target", "seed", "initial_epoch", "final_epoch", "n", "epoch"):
        if c in out.columns:
            out[c] = [("" if v is None or pd.isna(v) else str(int(v))) for v in out[c]]
    out = out.rename(columns={"initial_epoch": "init epoch", "final_epoch": "final epoch"})
    return out.astype(object).where(out.notna(), "").astype(str)


def clean_display(df: pd.DataFrame, **kw: Any) -> pd.DataFrame:
    """kind is the point of the clean table (pretrain vs fine-tuned): kept even when single."""
    return long_display(df, keep_kind=True, **kw)


def alignment_display(df: pd.DataFrame, **kw: Any) -> pd.DataFrame:
    """Without the gradient angle when no run tracked it, and without the initial epoch when it is 0
    everywhere ('init' is before training, as the title says)."""
    if df.empty:
        return df
    df = df.drop(columns=[c for c in ("grad_angle_final_mean", "grad_angle_final_std") if df[c].isna().all()])
    if (df["initial_epoch"] == 0).all():
        df = df.drop(columns=["initial_epoch"])
    return long_display(df, **kw)


def sanity_display(df: pd.DataFrame, *, compact: bool = False, **kw: Any) -> pd.DataFrame:
    """Constant model / dataset columns left out; `compact`: the terminal's columns (SANITY_COMPACT),
    without the free-text detail."""
    if df.empty:
        return df
    df = df.assign(value=[("" if v is None or pd.isna(v) else f"{v:.4g}") for v in df["value"]])
    out = long_display(df, **kw)
    out = out.drop(columns=[c for c in ("model", "dataset") if out[c].nunique(dropna=False) == 1])
    return out[[c for c in SANITY_COMPACT if c in out.columns]] if compact else out
