"""The leaderboard: one row per rule x model x data at ONE epsilon, RobustBench style.

Columns, each per attacked model (target) and then mean ± std over seeds with the Wilson 95% interval
of the pooled examples:

* clean: the attack run's clean accuracy on the n examples it attacked (the examples the robust
  numbers are over; the training run's test accuracy stores no n);
* autoattack: AutoAttack in exact mode, the per-example AND of the members of the newest
  autoattack run whose white-box members ran in exact mode only ('-' if there is none);
* papers: what the FA / sign-symmetry papers measured, PGD with the rule's own (feedback) gradient
  (loss ce preferred, the papers' loss; the newest such sweep);
* transfer / blackbox: the per-example worst case over the transfer-mode / query-mode sweeps
  (ensemble members left out: their bits are cumulative over the white-box members before them);
* worst: the per-example worst case over every L-inf sweep of the target (all of the above);
* flags: failed sanity checks of the attack runs behind the row's cells.

A worst case over sweeps of different examples cannot be formed: the cell says so (`sweeps.combine`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ssbench.report.display import drop_uninformative, eps_label, label_strings, robust_cell
from ssbench.report.stats import successes, wilson
from ssbench.report.sweeps import combine, examples_of
from ssbench.report.tables import EPS_DECIMALS, KEYS, ReportFilter, attack_indices, sort_rows, sweep_points

COLUMNS = ("clean", "autoattack", "papers", "transfer", "blackbox", "worst")
# short headers that wrap at their spaces (a leaderboard fits an 80-column terminal); the title spells each out
HEADERS = {"clean": "clean", "autoattack": "Auto Attack", "papers": "papers", "transfer": "transfer",
           "blackbox": "black box", "worst": "worst"}
AUTOATTACK_EXACT = "autoattack[exact]"


def _ensemble(ident: Any) -> Any:
    return ident.get("ensemble") if isinstance(ident, dict) else None


def _pick(pts: pd.DataFrame, column: str) -> pd.DataFrame:
    """The sweep points (of one target at one eps) behind a leaderboard column."""
    ens = pts["ident"].map(_ensemble)
    alone = pts[ens.isna()]
    if column == "autoattack":
        aa = pts[ens == AUTOATTACK_EXACT]
        return aa[aa["run_id"] == aa["run_id"].max()] if not aa.empty else aa
    if column == "papers":
        pgd = alone[(alone["attack"] == "pgd") & (alone["mode"] == "feedback")]
        if pgd.empty:
            return pgd
        ce = pgd[pgd["ident"].map(lambda d: d.get("loss") == "ce")]
        chosen = ce if not ce.empty else pgd
        return chosen[chosen["run_id"] == chosen["run_id"].max()].tail(1)
    if column == "transfer":
        return alone[alone["mode"] == "transfer"]
    if column == "blackbox":
        return alone[alone["mode"] == "query"]
    return pts  # worst: everything


def _cell(pts: pd.DataFrame, indices: dict[int, Any], honest_only: bool) -> dict[str, Any]:
    """robust, k, n, note and failed check ids of the per-example worst case of `pts` (one target, one eps)."""
    if pts.empty:
        return {"value": np.nan, "k": np.nan, "examples": np.nan, "note": None, "failed": set(), "runs": set()}
    if len(pts) == 1:  # one sweep is its own worst case: no bits needed
        r = pts.iloc[0]
        return {"value": float(r["robust"]), "k": float(successes(r["robust"], r["n"])), "examples": float(r["n"]),
                "note": None, "failed": set(r["failed_ids"]) if not (honest_only and r["mode"] == "feedback") else set(),
                "runs": {int(r["run_id"])}}
    sigs = [examples_of(n, s, indices.get(int(r))) for n, s, r in zip(pts["n"], pts["atk_seed"], pts["run_id"])]
    robust, correct, how = combine(list(pts["correct"]), list(pts["robust"]), sigs, "accuracy")
    failed = set().union(*[set(ids) for ids, m in zip(pts["failed_ids"], pts["mode"]) if not (honest_only and m == "feedback")])
    n = len(correct) if correct is not None else int(pts["n"].iloc[0])
    return {"value": robust, "k": robust * n if correct is not None else np.nan, "examples": n if correct is not None else np.nan,
            "note": how if np.isnan(robust) else None, "failed": failed, "runs": {int(r) for r in pts["run_id"]}}


def _clean(clean: pd.DataFrame, runs: set[int]) -> dict[str, Any]:
    """Clean accuracy over the examples of the newest attack run behind the row (params.n)."""
    c = clean[clean["run_id"].isin(runs)]
    if c.empty:
        return {"value": np.nan, "k": np.nan, "examples": np.nan, "note": None, "failed": set(), "runs": set()}
    row = c.loc[c["run_id"].idxmax()]
    n = (row["params"] or {}).get("n")
    return {"value": float(row["value"]), "k": float(successes(row["value"], n)) if n else np.nan,
            "examples": float(n) if n else np.nan, "note": None, "failed": set(), "runs": set()}


def target_eps(points: pd.DataFrame) -> dict[int, set[float]]:
    """Per target: the epsilons of its L-inf accuracy sweeps."""
    return {int(t): set(g["epsilon"]) for t, g in points.groupby("target")}


def choose_eps(points: pd.DataFrame, keys: list[str], eps: float | None) -> tuple[float | None, str | None]:
    """`eps` when given; else the largest epsilon every row (every target of it) has; None with why, if
    no epsilon is common to all rows (each row then reports at its own largest)."""
    if eps is not None:
        return eps, None
    common: set[float] | None = None
    for e in target_eps(points).values():
        common = e if common is None else common & e
    if not common:
        return None, "no ε is common to every row: each row at its own largest ε (pass --eps)"
    return max(common), None


def leaderboard(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None,
                eps: float | None = None) -> pd.DataFrame:
    """The leaderboard of a store: one row per variant (rule x model x data) at one ε (default: the
    largest ε every row has)."""
    pts = sweep_points(store, f, labels)
    if pts.empty:
        return leaderboard_table(pts, pts, {}, KEYS, eps)
    ev = store.frame_evaluations(kind="attack", status="finished")
    clean = ev[(ev["metric"] == "accuracy") & ev["params"].map(lambda p: isinstance(p, dict) and bool(p.get("clean")))] \
        if not ev.empty else ev
    out = leaderboard_table(pts, clean, attack_indices(store), KEYS, None if eps is None else round(float(eps), EPS_DECIMALS))
    return sort_rows(out, ["kind", "model", "dataset", "bits", "rule", "variant"])


def leaderboard_table(points: pd.DataFrame, clean: pd.DataFrame, indices: dict[int, Any], keys: list[str],
                      eps: float | None = None) -> pd.DataFrame:
    """The leaderboard's long form from `sweep_points` (accuracy, L-inf) and the attack runs' clean
    evaluations: per row of `keys`, each column's mean / std over targets, Wilson lo / hi of the pooled
    examples, targets with a value, note (n/a reason) and failed checks; flags, n targets, seeds, runs."""
    per = [f"{c}_{s}" for c in COLUMNS for s in ("mean", "std", "lo", "hi", "targets", "note", "failed")]
    cols = [*keys, "epsilon", *per, "flags", "n", "seeds", "runs"]
    pts = points[(points["metric"] == "accuracy") & (points["norm"] == "linf")] if not points.empty else points
    if pts.empty:
        return pd.DataFrame(columns=cols)
    chosen, _ = choose_eps(pts, keys, eps)
    rows = []
    for key, group in pts.groupby(keys, sort=False, dropna=False):
        at = chosen if chosen is not None else max(set.intersection(*target_eps(group).values()) or {group["epsilon"].max()})
        per_target = []
        for target, g in group.groupby("target", sort=True):
            here = g[np.isclose(g["epsilon"], at)]
            cells = {c: _cell(_pick(here, c), indices, honest_only=c == "worst") for c in COLUMNS if c != "clean"}
            runs = set().union(*[c["runs"] for c in cells.values()])
            cells["clean"] = _clean(clean, runs)
            per_target.append((g["seed"].iloc[0], cells))
        rows.append(_aggregate(dict(zip(keys, key if isinstance(key, tuple) else (key,))), at, per_target))
    return pd.DataFrame(rows).reindex(columns=cols)


def _aggregate(labels: dict[str, Any], eps: float, per_target: list[tuple[Any, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """One leaderboard row: mean ± std over targets per column, the pooled Wilson interval."""
    row: dict[str, Any] = {**labels, "epsilon": eps}
    flags: set[int] = set()
    runs: set[int] = set()
    for c in COLUMNS:
        cells = [cells[c] for _, cells in per_target]
        values = np.array([x["value"] for x in cells], dtype=float)
        have = ~np.isnan(values)
        notes = [x["note"] for x in cells if x["note"]]
        # a worst case that cannot be formed for one seed leaves the whole cell n/a: a mean over the
        # other seeds would pass for all of them
        na = bool(notes)
        row[f"{c}_mean"] = np.nan if na or not have.any() else float(values[have].mean())
        row[f"{c}_std"] = float(values[have].std(ddof=1)) if not na and have.sum() > 1 else np.nan
        k = np.array([x["k"] for x in cells], dtype=float)
        n = np.array([x["examples"] for x in cells], dtype=float)
        ok = have & ~np.isnan(k) & ~np.isnan(n)
        lo, hi = wilson(k[ok].sum(), n[ok].sum()) if ok.any() and not na else (np.nan, np.nan)
        row[f"{c}_lo"], row[f"{c}_hi"] = lo, hi
        row[f"{c}_targets"] = int(have.sum())
        row[f"{c}_note"] = notes[0] if notes else None
        failed = set().union(*[x["failed"] for x in cells])
        row[f"{c}_failed"] = len(failed)
        flags |= failed
        runs |= set().union(*[x["runs"] for x in cells])
    row["flags"] = len(flags)
    row["n"] = len(per_target)
    row["seeds"] = ",".join(str(int(s)) for s in sorted(s for s, _ in per_target if s is not None and not pd.isna(s)))
    row["runs"] = ",".join(map(str, sorted(runs)))
    return row


def leaderboard_wide(df: pd.DataFrame, *, std: bool = True, runs: bool = True, percent: bool = False) -> pd.DataFrame:
    """Display form: labels, ε, one cell per column ('0.512 ± 0.020 [0.468, 0.556]', '!' = failed checks
    behind it, '-' = not run, 'n/a (why)', '(2/3 seeds)' where only some seeds have it), flags, n.
    `percent`: accuracies in % with one decimal ('51.2 ± 2.0 [46.8, 55.6]')."""
    if df.empty:
        return pd.DataFrame()
    df = label_strings(df)
    labels = [c for c in ("kind", "model", "dataset", "bits", "rule", "variant") if c in df.columns]
    labels = [c for c in labels if c not in drop_uninformative(df, ("kind",))]
    out = df[labels].copy()
    out["ε"] = [eps_label(e, "linf") for e in df["epsilon"]]
    for c in COLUMNS:
        cells = []
        for _, r in df.iterrows():
            cell = robust_cell(r[f"{c}_mean"], r[f"{c}_std"], r[f"{c}_lo"], r[f"{c}_hi"], r[f"{c}_failed"],
                                r[f"{c}_note"], std, percent) or "-"
            if cell != "-" and 0 < r[f"{c}_targets"] < r["n"] and std:  # before the '!': flags end a cell
                flag = "!" if cell.endswith("!") else ""
                cell = f"{cell.removesuffix('!')} ({int(r[f'{c}_targets'])}/{int(r['n'])} seeds){flag}"
            cells.append(cell)
        out[HEADERS[c]] = cells
    out["flags"] = df["flags"].astype(int).astype(str)
    out["n"] = df["n"].astype(int).astype(str)
    if runs:
        out["runs"] = df["runs"]
    return out.reset_index(drop=True)
