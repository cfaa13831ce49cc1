"""Report tables as pandas DataFrames, built from the store's frames only.

Every builder returns a *long* numeric frame (what CSV gets); `display_frame` turns one into
strings ("0.912 ± 0.004") for the terminal, Markdown and LaTeX. Only finished runs count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

MODE_ORDER = ("feedback", "exact", "transfer", "query", "worst")
TRAIN_KINDS = ("pretrain", "finetune", "train")
EPS_DECIMALS = 8  # 8/255 stored by two runs must land on the same column


@dataclass(frozen=True)
class ReportFilter:
    """Filters shared by every table: the attacked / trained model's recipe, tag, dataset, model, rule."""

    recipe: str | None = None
    tag: str | None = None
    dataset: str | None = None
    model: str | None = None
    rule: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _std(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def _agg(df: pd.DataFrame, keys: list[str], value: str, prefix: str) -> pd.DataFrame:
    """mean, sample std (ddof=1; NaN for one run) and count of `value` per group of `keys`."""
    if df.empty:
        return pd.DataFrame(columns=[*keys, f"{prefix}_mean", f"{prefix}_std", "n"])
    g = df.groupby(keys, sort=False, dropna=False)[value]
    out = pd.DataFrame({f"{prefix}_mean": g.mean(), f"{prefix}_std": g.agg(_std), "n": g.count()}).reset_index()
    return out


def _sort(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    keys = [k for k in keys if k in df.columns]
    if df.empty or not keys:
        return df.reset_index(drop=True)

    def key(col: pd.Series) -> pd.Series:
        if col.name == "mode":
            return col.map(lambda m: MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER))
        if col.name == "rule":  # bp first: the reference row
            return col.map(lambda r: (r != "bp", str(r)))
        return col

    return df.sort_values(keys, key=key, kind="stable").reset_index(drop=True)


# -- (1) clean accuracy ---------------------------------------------------------------------------

def clean_table(store: Any, f: ReportFilter = ReportFilter()) -> pd.DataFrame:
    """Test accuracy of trained runs per kind x rule x model x dataset: mean ± std over seeds, n runs."""
    ev = store.frame_evaluations(status="finished", **f.kwargs())
    cols = ["kind", "rule", "model", "dataset", "accuracy_mean", "accuracy_std", "n", "seeds"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = ev[ev["kind"].isin(TRAIN_KINDS) & (ev["metric"] == "accuracy") & (ev["split"] == "test")]
    ev = ev.drop_duplicates("run_id", keep="last")  # one number per run: the last logged
    keys = ["kind", "rule", "model", "dataset"]
    out = _agg(ev, keys, "value", "accuracy")
    seeds = ev.groupby(keys, sort=False, dropna=False)["seed"].agg(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna())))
    out = out.merge(seeds.rename("seeds").reset_index(), on=keys, how="left")
    return _sort(out[cols], ["kind", "model", "dataset", "rule"])


# -- (2) robust accuracy --------------------------------------------------------------------------

def _and_strings(strings: list[str]) -> str:
    arr = np.array([np.frombuffer(s.encode(), dtype=np.uint8) == ord("1") for s in strings])
    return "".join("1" if v else "0" for v in arr.all(axis=0))


def worst_case(points: pd.DataFrame) -> pd.DataFrame:
    """The 'worst' pseudo-mode: per (target, attack, metric, epsilon) over the gradient modes present.

    With per-example `correct` strings of equal length from runs that attacked the same examples
    (same n and attack seed), an example counts as robust only if it survived every mode (AND);
    otherwise the minimum of the modes' robust values (an upper bound of the true worst case).
    Only groups with at least two modes get a worst row.
    """
    rows = []
    keys = ["target", "attack", "metric", "epsilon"]
    for key, g in points.groupby(keys, sort=False, dropna=False):
        if g["mode"].nunique() < 2:
            continue
        strings = g["correct"].tolist()
        same_examples = g["n"].nunique() == 1 and g["attack_seed"].nunique(dropna=False) == 1
        if same_examples and all(isinstance(s, str) and len(s) == int(g["n"].iloc[0]) and s for s in strings):
            alive = _and_strings(strings)
            robust, how, correct = alive.count("1") / len(alive), "per-example", alive
        else:
            robust, how, correct = float(g["robust"].min()), "min", None
        first = g.iloc[0]
        rows.append({**{c: first[c] for c in g.columns if c not in ("mode", "robust", "correct", "run_id")},
                     "mode": "worst", "robust": robust, "correct": correct, "run_id": first["run_id"],
                     "combined": how, "failed_checks": int(g["failed_checks"].max())})
    return pd.DataFrame(rows)


def _failed_checks(store: Any) -> pd.DataFrame:
    s = store.frame_sanity()
    if s.empty:
        return s
    return s[s["passed"].map(lambda v: v is False or v == 0) & s["passed"].notna()]


def robust_points(store: Any, f: ReportFilter = ReportFilter()) -> pd.DataFrame:
    """Per-target sweep points (the latest finished attack run per target x attack x mode x eps)
    plus the 'worst' rows, with `failed_checks` = failed sanity checks of the attack run that concern
    the point's attack / mode (or the whole run)."""
    sw = store.frame_sweeps(status="finished", **f.kwargs())
    if sw.empty:
        return sw
    sw = sw.copy()
    sw["epsilon"] = sw["epsilon"].round(EPS_DECIMALS)
    sw["target"] = [int(t) if pd.notna(t) else -int(r) for t, r in zip(sw["target_id"], sw["run_id"])]
    sw["norm"] = sw["params"].map(lambda p: (p or {}).get("norm", "linf"))
    sw = sw.sort_values("run_id", kind="stable").drop_duplicates(["target", "attack", "metric", "mode", "epsilon"], keep="last")
    failed = _failed_checks(store)
    counts = []
    for run_id, attack, mode in zip(sw["run_id"], sw["attack"], sw["mode"]):
        if failed.empty:
            counts.append(0)
            continue
        r = failed[failed["run_id"] == run_id]
        hit = r["attack"].isna() | (r["attack"] == attack)
        hit &= r["mode"].isna() | (r["mode"] == mode)
        counts.append(int(hit.sum()))
    sw["failed_checks"] = counts
    worst = worst_case(sw)
    sw["combined"] = None
    return pd.concat([sw, worst], ignore_index=True) if not worst.empty else sw


def robust_table(store: Any, f: ReportFilter = ReportFilter(), points: pd.DataFrame | None = None) -> pd.DataFrame:
    """Robust metric per rule x model x dataset x attack x metric x epsilon x mode (with 'worst'):
    mean ± std over targets (seeds), n targets, examples per target, failed sanity checks."""
    p = robust_points(store, f) if points is None else points
    keys = ["rule", "model", "dataset", "attack", "norm", "metric", "epsilon", "mode"]
    cols = [*keys, "robust_mean", "robust_std", "n", "examples", "failed_checks"]
    if p.empty:
        return pd.DataFrame(columns=cols)
    out = _agg(p, keys, "robust", "robust")
    g = p.groupby(keys, sort=False, dropna=False)
    out = out.merge(g["n"].sum().rename("examples").reset_index(), on=keys)
    out = out.merge(g["failed_checks"].sum().reset_index(), on=keys)
    return _sort(out[cols], ["model", "dataset", "metric", "attack", "rule", "mode", "epsilon"])


def robust_wide(df: pd.DataFrame, *, std: bool = True) -> pd.DataFrame:
    """Display form of `robust_table`: one row per rule x attack x mode, one column per epsilon.
    A cell ending in '!' has failed sanity checks behind it (see the sanity table).
    `std=False`: means only (narrow terminals)."""
    if df.empty:
        return pd.DataFrame()
    df = df.copy()
    df["cell"] = [_pm(m, s if std else None) + ("!" if fc else "")
                  for m, s, fc in zip(df["robust_mean"], df["robust_std"], df["failed_checks"])]
    df["eps"] = [_eps_label(e, norm) for e, norm in zip(df["epsilon"], df["norm"])]
    index = ["model", "dataset", "attack", "metric", "rule", "mode"]
    if df["model"].nunique() == 1 and df["dataset"].nunique() == 1:
        index = index[2:]
    if df["metric"].nunique() == 1:
        index.remove("metric")
    order = list(dict.fromkeys(df.sort_values(["norm", "epsilon"])["eps"]))
    wide = df.pivot_table(index=index, columns="eps", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=order).reset_index()
    wide.columns.name = None
    wide = _sort(wide, ["model", "dataset", "attack", "metric", "rule", "mode"])
    return wide.fillna("")


def _eps_label(e: float, norm: Any) -> str:
    """'0.03' for decimal grids, '8/255' for the CIFAR-style grid, '3px' for l0 budgets."""
    if norm == "l0":
        return f"{int(e)}px"
    k = e * 255
    if e > 0 and abs(k - round(k)) < 1e-6 and abs(e * 100 - round(e * 100)) > 1e-6:
        return f"{int(round(k))}/255"
    return f"{e:g}"


# -- (3) alignment --------------------------------------------------------------------------------

def alignment_curves(store: Any, f: ReportFilter = ReportFilter()) -> pd.DataFrame:
    """Mean angle / norm ratio per rule x model x dataset x layer x epoch over finished rule runs."""
    a = store.frame_alignment(status="finished", **f.kwargs())
    keys = ["rule", "model", "dataset", "layer", "epoch"]
    if a.empty:
        return pd.DataFrame(columns=[*keys, "angle_mean", "angle_std", "n"])
    a = a[a["kind"].isin(("finetune", "train"))].copy()
    a["layer_order"] = a.groupby("run_id").cumcount()  # the order alignment_metrics reported layers in
    a["layer_order"] = a.groupby(["run_id", "layer"])["layer_order"].transform("min")
    out = _agg(a, keys, "angle_deg", "angle")
    out = out.merge(a.groupby(keys, dropna=False)["norm_ratio"].mean().rename("norm_ratio_mean").reset_index(), on=keys)
    out = out.merge(a.groupby(["rule", "layer"], dropna=False)["layer_order"].min().reset_index(), on=["rule", "layer"])
    return out.sort_values(["rule", "layer_order", "epoch"], kind="stable").drop(columns="layer_order").reset_index(drop=True)


def alignment_table(store: Any, f: ReportFilter = ReportFilter()) -> pd.DataFrame:
    """Angle(W, B) and |B|/|W| per layer at each run's last epoch: mean ± std over runs, per rule."""
    a = store.frame_alignment(status="finished", **f.kwargs())
    keys = ["rule", "model", "dataset", "layer"]
    cols = [*keys, "epoch", "angle_mean", "angle_std", "norm_ratio_mean", "norm_ratio_std", "n"]
    if a.empty:
        return pd.DataFrame(columns=cols)
    a = a[a["kind"].isin(("finetune", "train"))].copy()
    a["order"] = range(len(a))
    last = a.groupby("run_id")["epoch"].transform("max")
    a = a[a["epoch"] == last]
    if a.empty:
        return pd.DataFrame(columns=cols)
    angle = _agg(a, keys, "angle_deg", "angle")
    ratio = _agg(a, keys, "norm_ratio", "norm_ratio").drop(columns="n")
    ep = a.groupby(keys, sort=False, dropna=False)["epoch"].max().reset_index()
    order = a.groupby(keys, sort=False, dropna=False)["order"].min().reset_index()
    out = angle.merge(ratio, on=keys).merge(ep, on=keys).merge(order, on=keys)
    out = _sort(out, ["model", "dataset", "rule", "order"]).drop(columns="order")
    return out[cols]


# -- (4) hashing ----------------------------------------------------------------------------------

def hashing_table(store: Any, f: ReportFilter = ReportFilter()) -> pd.DataFrame:
    """Clean retrieval mAP (evaluations 'map@K', split test) of trained runs per rule x bits."""
    ev = store.frame_evaluations(status="finished", **f.kwargs())
    keys = ["rule", "model", "dataset", "bits", "metric"]
    cols = [*keys, "map_mean", "map_std", "n"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = ev[ev["kind"].isin(TRAIN_KINDS) & ev["metric"].str.startswith("map") & (ev["split"] == "test")].copy()
    if ev.empty:
        return pd.DataFrame(columns=cols)
    runs = store.frame_runs().set_index("id")["config"]
    ev["bits"] = [((runs.get(r) or {}).get("hashing") or {}).get("bits") for r in ev["run_id"]]
    ev = ev.drop_duplicates(["run_id", "metric"], keep="last")
    out = _agg(ev, keys, "value", "map")
    return _sort(out[cols], ["model", "dataset", "metric", "bits", "rule"])


def hashing_attack_table(store: Any, f: ReportFilter = ReportFilter(), robust: pd.DataFrame | None = None) -> pd.DataFrame:
    """The mAP sweeps of attack runs (robust table rows whose metric is 'map@K')."""
    r = robust_table(store, f) if robust is None else robust
    return r[r["metric"].astype(str).str.startswith("map")].reset_index(drop=True) if not r.empty else r


# -- (5) sanity -----------------------------------------------------------------------------------

def sanity_table(store: Any, f: ReportFilter = ReportFilter()) -> pd.DataFrame:
    """Sanity checks that FAILED, with the attacked model's rule / model / dataset / seed."""
    s = store.frame_sanity(**f.kwargs())
    cols = ["run", "target", "rule", "model", "dataset", "seed", "check", "attack", "mode", "value", "detail"]
    if s.empty:
        return pd.DataFrame(columns=cols)
    s = s[s["passed"].notna() & s["passed"].map(lambda v: v is False or v == 0)].copy()
    runs = store.frame_runs().set_index("id")
    s["target_id"] = s["parent_id"]
    s["seed"] = [runs["seed"].get(int(t)) if pd.notna(t) and int(t) in runs.index else None for t in s["target_id"]]
    s = s.rename(columns={"name": "check", "run_id": "run", "target_id": "target"})
    return _sort(s[cols], ["run"])


# -- display ------------------------------------------------------------------------------------

def _pm(mean: Any, std: Any, digits: int = 3) -> str:
    if mean is None or pd.isna(mean):
        return ""
    if std is None or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_frame(name: str, df: pd.DataFrame, *, std: bool = True) -> pd.DataFrame:
    """Strings for humans: mean ± std merged, long robust tables pivoted over epsilon
    (`std=False`: robust cells show the mean only)."""
    if df.empty:
        return df
    if name in ("robust", "hashing_attacks"):
        return robust_wide(df, std=std)
    out = df.copy()
    if name == "sanity":  # narrow enough for a terminal: constant columns say nothing
        out = out.drop(columns=[c for c in ("model", "dataset") if out[c].nunique(dropna=False) == 1])
    for prefix, digits in (("accuracy", 3), ("angle", 1), ("norm_ratio", 2), ("map", 3)):
        m, s = f"{prefix}_mean", f"{prefix}_std"
        if m in out.columns:
            pos = list(out.columns).index(m)
            merged = [_pm(a, b, digits) for a, b in zip(out[m], out[s] if s in out.columns else [None] * len(out))]
            out = out.drop(columns=[c for c in (m, s) if c in out.columns])
            out.insert(pos, prefix if prefix != "angle" else "angle_deg", merged)
    if "value" in out.columns:
        out["value"] = [("" if v is None or pd.isna(v) else f"{v:.4g}") for v in out["value"]]
    for c in ("target", "seed", "epoch", "bits"):
        if c in out.columns:
            out[c] = [("" if v is None or pd.isna(v) else str(int(v))) for v in out[c]]
    return out.astype(object).where(out.notna(), "").astype(str)


TABLES = ("clean", "robust", "alignment", "hashing", "sanity")


def build_tables(store: Any, f: ReportFilter = ReportFilter(), which: str = "all") -> dict[str, pd.DataFrame]:
    """The named tables ('all' = every one that has data; a named one is returned even when empty)."""
    names = TABLES if which == "all" else (which,)
    out: dict[str, pd.DataFrame] = {}
    robust = None
    for name in names:
        if name == "clean":
            out["clean"] = clean_table(store, f)
        elif name == "robust":
            robust = robust_table(store, f)
            out["robust"] = robust[~robust["metric"].astype(str).str.startswith("map")].reset_index(drop=True) if not robust.empty else robust
        elif name == "alignment":
            out["alignment"] = alignment_table(store, f)
        elif name == "hashing":
            out["hashing"] = hashing_table(store, f)
            out["hashing_attacks"] = hashing_attack_table(store, f, robust)
        elif name == "sanity":
            out["sanity"] = sanity_table(store, f)
    if which == "all":
        out = {k: v for k, v in out.items() if not v.empty}
    return out
