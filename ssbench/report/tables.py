"""Report tables as pandas DataFrames, built from the store's frames only.

Every builder returns a *long* numeric frame (what CSV and JSON get); each table's display function
(`ssbench.report.display`; `ssbench.report.registry` names which is whose) turns one into strings
("0.912 ± 0.004") for the terminal, Markdown, LaTeX and HTML. Only finished runs count. The
leaderboard's builder is in `ssbench.report.leaderboard`.

Rows are grouped by the variant labels of `ssbench.report.variants` (rule with its options, model
with its widths, dataset with its class subset / training-set size, hash bits, any other config
difference), so a mean ± std is always over seeds of one configuration, never over configurations.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ssbench.report.cells import blank
from ssbench.report.stats import successes, wilson
from ssbench.report.sweeps import WORST_ALL, add_identity, combine, examples_of, newest_per_identity, setting_labels
from ssbench.report.variants import LABELS, rule_sort_key, run_labels
from ssbench.specs import TRAIN_KINDS

MODE_ORDER = ("feedback", "exact", "transfer", "query", "worst", "all")
EPS_DECIMALS = 8  # 8/255 stored by two runs must land on the same column
KEYS = ["kind", *LABELS]  # what identifies a configuration (everything but the seed)


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


def labels_of(store: Any) -> pd.DataFrame:
    """`run_labels` of every run in the store (one query; pass it to the builders to reuse it)."""
    return run_labels(store.frame_runs())


def attach_labels(df: pd.DataFrame, labels: pd.DataFrame, id_col: str = "run_id") -> pd.DataFrame:
    """Replace the bare rule / model / dataset (and kind) by the labels of each row's subject run.
    Rows of runs the labels do not know (started after they were read) are left out."""
    lab = labels.reindex(df[id_col].astype(int).to_numpy())
    known = lab["subject"].notna().to_numpy()
    df, lab = df[known].copy(), lab[known]
    for c in ["subject", *KEYS]:
        df[c] = lab[c].to_numpy()
    df["subject"] = df["subject"].astype(int)
    return df


def _subject_filter(df: pd.DataFrame, labels: pd.DataFrame, f: ReportFilter) -> pd.DataFrame:
    """recipe / tag of a child run (analysis) are those of the run it analysed, else its own (as for sweeps)."""
    if df.empty or (f.recipe is None and f.tag is None):
        return df
    lab = labels.loc[df["run_id"].astype(int).to_numpy()]
    keep = np.ones(len(df), dtype=bool)
    if f.recipe is not None:
        keep &= (lab["recipe"] == f.recipe).to_numpy()
    if f.tag is not None:
        has = lambda t: isinstance(t, list) and f.tag in t  # noqa: E731
        keep &= np.array([has(a) or has(b) for a, b in zip(lab["tags"], df["tags"])], dtype=bool)
    return df[keep].reset_index(drop=True)


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


def _agg_each(df: pd.DataFrame, keys: list[str], values: Sequence[str]) -> pd.DataFrame:
    """`_agg` of several columns side by side (<v>_mean, <v>_std for each, one n: the first's)."""
    out = _agg(df, keys, values[0], values[0])
    for v in values[1:]:
        out = out.merge(_agg(df, keys, v, v).drop(columns="n"), on=keys)
    return out


def _seeds(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    s = df.groupby(keys, sort=False, dropna=False)["seed"].agg(
        lambda v: ",".join(str(int(x)) for x in sorted(v.dropna())))
    return s.rename("seeds").reset_index()


def sort_rows(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows in the report's order: modes as MODE_ORDER, bp first then the rules' order, options numerically."""
    keys = [k for k in keys if k in df.columns]
    if df.empty or not keys:
        return df.reset_index(drop=True)

    def key(col: pd.Series) -> pd.Series:
        if col.name == "mode":
            return col.map(lambda m: MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER))
        if col.name == "rule":  # bp first (the reference row), then rule order, options numerically
            order = {r: i for i, r in enumerate(sorted(set(map(str, col)), key=rule_sort_key))}
            return col.map(lambda r: order[str(r)])
        if col.name == "kind":
            return col.map(lambda k: TRAIN_KINDS.index(k) if k in TRAIN_KINDS else len(TRAIN_KINDS))
        if col.dtype == object:
            return col.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        return col

    return df.sort_values(keys, key=key, kind="stable").reset_index(drop=True)


# -- (1) clean accuracy ---------------------------------------------------------------------------

def clean_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test accuracy of trained runs per kind x variant (rule, model, dataset, bits, variant): mean ± std
    over seeds, n runs."""
    ev = store.frame_evaluations(status="finished", **f.kwargs())
    cols = [*KEYS, "accuracy_mean", "accuracy_std", "n", "seeds"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = ev[ev["kind"].isin(TRAIN_KINDS) & (ev["metric"] == "accuracy") & (ev["split"] == "test")]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = attach_labels(ev, labels_of(store) if labels is None else labels)
    ev = ev.drop_duplicates("run_id", keep="last")  # one number per run: the last logged
    out = _agg(ev, KEYS, "value", "accuracy").merge(_seeds(ev, KEYS), on=KEYS, how="left")
    return sort_rows(out[cols], ["kind", "model", "dataset", "bits", "rule", "variant"])


# -- (2) robust accuracy --------------------------------------------------------------------------

def _worst_failed(modes: Any, failed_ids: Any | None, failed_checks: Any) -> int:
    """Failed checks behind a worst-case cell: those of the non-feedback modes (mode-independent
    checks are counted in every mode). The worst case takes the per-example minimum over all modes,
    exact included, so it does not rest on the feedback gradient being honest, and a failed
    feedback-mode gradient-consistency check (the obfuscation this tool exists to expose) must not
    flag it."""
    return len(_honest_failed_ids(modes, failed_ids)) if failed_ids is not None else \
        int(max([failed_checks[i] for i, m in enumerate(modes) if m != "feedback"], default=0))


def _honest_failed_ids(modes: Any, failed_ids: Any | None) -> set[int]:
    if failed_ids is None:
        return set()
    return set().union(*[set(failed_ids[i]) for i, m in enumerate(modes) if m != "feedback"])


def _combined_rows(points: pd.DataFrame, keys: list[str], fixed: dict[str, Any], indices: dict[int, Any] | None,
                   enough: Any) -> pd.DataFrame:
    """One row per group of `keys` that is `enough` (a predicate on the group's rows): the per-example
    worst case of its sweeps (`sweeps.combine`), labelled by `fixed` (attack / mode / setting)."""
    if points.empty:
        return pd.DataFrame()
    col = {c: points[c].to_numpy() for c in points.columns}  # plain arrays: thousands of small groups
    seed_col = "atk_seed" if "atk_seed" in col else "attack_seed"
    skip = ("mode", "robust", "correct", "run_id", "runs", "failed_ids", "failed_checks", "sweep", "params", "ident",
            "ident_key", "seconds")
    rows = []
    for idx in points.groupby(keys, sort=False, dropna=False).indices.values():
        if not enough(idx):
            continue
        sigs = [examples_of(col["n"][i], col[seed_col][i] if seed_col in col else None,
                            (indices or {}).get(int(col["run_id"][i]))) for i in idx]
        robust, correct, how = combine(list(col["correct"][idx]), list(col["robust"][idx]), sigs, str(col["metric"][idx[0]]))
        failed_ids = col["failed_ids"][idx] if "failed_ids" in col else None
        runs = sorted({int(r) for r in col["run_id"][idx]})
        rows.append({**{c: col[c][idx[0]] for c in points.columns if c not in skip}, **fixed,
                     **({"n": len(correct)} if correct is not None else {}),  # shared examples: fewer than each sweep's
                     "robust": robust, "correct": correct, "run_id": runs[-1], "runs": ",".join(map(str, runs)),
                     "combined": how, "sweeps": len(idx), "failed_checks": _worst_failed(col["mode"][idx], failed_ids, col["failed_checks"][idx]),
                     "failed_ids": sorted(_honest_failed_ids(col["mode"][idx], failed_ids))})
    return pd.DataFrame(rows)


def worst_case(points: pd.DataFrame, indices: dict[int, Any] | None = None) -> pd.DataFrame:
    """The 'worst' pseudo-mode: per target x attack x setting x metric x epsilon over the gradient
    modes present (groups with at least two modes).

    Accuracy: an example counts as robust only if it survived every mode (AND of the per-example
    `correct` strings); sweeps that did not attack the same examples (n, attack seed, the runs'
    `indices`) give NaN with the reason in `combined`, never a mixed number. mAP: the minimum over
    modes (no per-example form). `failed_checks`: see `_worst_failed`."""
    keys = [k for k in ("target", "attack", "setting", "metric", "epsilon") if k in points.columns]
    modes = points["mode"].to_numpy() if not points.empty else None
    return _combined_rows(points, keys, {"mode": "worst"}, indices, lambda idx: len(set(modes[idx])) >= 2)


def worst_of_all(points: pd.DataFrame, indices: dict[int, Any] | None = None) -> pd.DataFrame:
    """The headline worst case: per target x metric x epsilon, an example counts as robust only if it
    survived EVERY L-inf sweep of the target (all attacks, settings and modes, black-box and ensemble
    members included). Only where at least two sweeps exist; NaN with the reason when they did not
    attack the same examples."""
    if points.empty:
        return pd.DataFrame()
    linf = points[points["norm"] == "linf"].reset_index(drop=True)
    if linf.empty:
        return pd.DataFrame()
    attack, mode = WORST_ALL
    return _combined_rows(linf, ["target", "metric", "epsilon"], {"attack": attack, "mode": mode, "setting": "", "norm": "linf"},
                          indices, lambda idx: len(idx) >= 2)


def _failed_checks(store: Any) -> pd.DataFrame:
    s = store.frame_sanity()
    if s.empty:
        return s
    s = s.reset_index(drop=True)
    s["check_id"] = range(len(s))
    return s[s["passed"].map(lambda v: v is False or v == 0) & s["passed"].notna()]


def attack_indices(store: Any) -> dict[int, Any]:
    """attack run id -> the test indices it attacked (its summary's `indices`), where stored."""
    runs = store.frame_runs(kind="attack")
    if runs.empty or "summary" not in runs.columns:
        return {}
    return {int(i): s.get("indices") for i, s in zip(runs["id"], runs["summary"]) if isinstance(s, dict) and s.get("indices") is not None}


def sweep_points(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """The sweep points that count: per target and sweep identity (`sweeps.add_identity`) those of the
    newest finished attack run, with the target's variant labels, `setting` (what differs between sweeps
    of one attack), `runs` and `failed_checks` / `failed_ids` = failed sanity checks of the attack run
    that concern the point's attack / mode (or the whole run)."""
    sw = store.frame_sweeps(status="finished", **f.kwargs())
    if sw.empty:
        return sw
    sw = attach_labels(sw, labels_of(store) if labels is None else labels)
    sw["epsilon"] = sw["epsilon"].round(EPS_DECIMALS)
    sw["target"] = [int(t) if pd.notna(t) else -int(r) for t, r in zip(sw["target_id"], sw["run_id"])]
    sw["norm"] = sw["params"].map(lambda p: (p or {}).get("norm", "linf"))
    sw = newest_per_identity(add_identity(sw))
    sw["setting"] = setting_labels(sw)
    sw["runs"] = sw["run_id"].astype(int).astype(str)
    failed = _failed_checks(store)
    by_run: dict[int, list[tuple[int, Any, Any]]] = {}
    if not failed.empty:
        for cid, rid, attack, mode in zip(failed["check_id"], failed["run_id"], failed["attack"], failed["mode"]):
            by_run.setdefault(int(rid), []).append((int(cid), attack, mode))
    # a check concerns a point when it names the point's attack / mode or none (the whole run)
    ids = [[cid for cid, a, m in by_run.get(int(run_id), []) if (blank(a) or a == attack) and (blank(m) or m == mode)]
           for run_id, attack, mode in zip(sw["run_id"], sw["attack"], sw["mode"])]
    sw["failed_ids"] = ids
    sw["failed_checks"] = [len(i) for i in ids]
    sw["combined"] = None
    return sw


def robust_points(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """`sweep_points` plus the 'worst' rows (per attack over modes) and the 'worst of all' rows (per
    target over every L-inf sweep)."""
    sw = sweep_points(store, f, labels)
    if sw.empty:
        return sw
    indices = attack_indices(store)
    parts = [sw, worst_case(sw, indices), worst_of_all(sw, indices)]
    return pd.concat([p for p in parts if not p.empty], ignore_index=True)


ROBUST_KEYS = [*KEYS, "attack", "setting", "norm", "metric", "epsilon", "mode"]


def run_list(runs: pd.Series) -> str:
    """'5,12,19': the attack runs behind a row, from per-point '5' / per-worst-case '5,6' entries."""
    return ",".join(map(str, sorted({int(x) for v in runs if not blank(v) for x in str(v).split(",")})))


def _first_note(notes: pd.Series) -> Any:
    na = [v for v in notes if isinstance(v, str) and v.startswith("n/a")]
    return na[0] if na else None


def robust_table(store: Any, f: ReportFilter = ReportFilter(), points: pd.DataFrame | None = None,
                 labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Robust metric per variant (kind, rule, model, dataset, bits, variant) x attack x setting x metric x
    epsilon x mode (with 'worst' and 'worst of all' / 'all'): mean ± std over targets (seeds), n targets,
    examples (summed over targets), robust_lo / robust_hi = the Wilson 95% interval of the pooled examples
    (accuracy only), failed sanity checks, note (why a worst case is n/a) and the attack runs behind it.
    A group where any target's worst case cannot be formed is n/a as a whole (a mean over the others
    would pass for all of them)."""
    p = robust_points(store, f, labels) if points is None else points
    keys = ROBUST_KEYS
    cols = [*keys, "robust_mean", "robust_std", "robust_lo", "robust_hi", "n", "examples", "failed_checks", "note", "runs"]
    if p.empty:
        return pd.DataFrame(columns=cols)
    p = p.assign(setting=p["setting"] if "setting" in p.columns else "", k=successes(p["robust"], p["n"]),
                 runs=p["runs"] if "runs" in p.columns else p["run_id"].astype(int).astype(str))
    p["setting"] = p["setting"].fillna("")
    g = p.groupby(keys, sort=False, dropna=False)
    out = _agg(p, keys, "robust", "robust").drop(columns="n")
    out = out.merge(g.size().rename("n").reset_index(), on=keys)
    out = out.merge(g["n"].sum().rename("examples").reset_index(), on=keys)
    out = out.merge(g["k"].sum(min_count=1).reset_index(), on=keys)
    out = out.merge(g["failed_checks"].sum().reset_index(), on=keys)
    out = out.merge(g["robust"].agg(lambda v: bool(v.isna().any())).rename("_na").reset_index(), on=keys)
    out = out.merge(g["combined"].agg(_first_note).rename("note").reset_index(), on=keys)
    out = out.merge(g["runs"].agg(run_list).reset_index(), on=keys)
    out.loc[out["_na"], ["robust_mean", "robust_std"]] = np.nan
    lo, hi = wilson(out["k"], out["examples"])
    proportion = (out["metric"] == "accuracy") & ~out["_na"]
    out["robust_lo"] = np.where(proportion, lo, np.nan)
    out["robust_hi"] = np.where(proportion, hi, np.nan)
    return _sort_robust(out[cols])


def _sort_robust(df: pd.DataFrame) -> pd.DataFrame:
    """Attacks alphabetically, then the worst of all last (the headline row closes the table)."""
    df = df.assign(_last=(df["attack"] == WORST_ALL[0]).astype(int))
    out = sort_rows(df, ["kind", "model", "dataset", "bits", "metric", "_last", "attack", "setting", "rule", "variant", "mode", "epsilon"])
    return out.drop(columns="_last")


# -- (3) alignment --------------------------------------------------------------------------------

def _alignment(store: Any, f: ReportFilter, labels: pd.DataFrame | None) -> pd.DataFrame:
    a = store.frame_alignment(status="finished", **f.kwargs())
    if a.empty:
        return a
    a = a[a["kind"].isin(("finetune", "train"))]
    if a.empty:
        return a
    a = attach_labels(a, labels_of(store) if labels is None else labels)
    a["layer_order"] = a.groupby("run_id").cumcount()  # the order alignment_metrics reported layers in
    a["layer_order"] = a.groupby(["run_id", "layer"])["layer_order"].transform("min")
    return a


def alignment_curves(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean angle(W, B), |B|/|W| and (when tracked) gradient angle per variant x layer x epoch."""
    a = _alignment(store, f, labels)
    keys = [*KEYS, "layer", "epoch"]
    cols = [*keys, "angle_mean", "angle_std", "n", "norm_ratio_mean", "grad_angle_mean", "grad_angle_std"]
    if a.empty:
        return pd.DataFrame(columns=cols)
    out = _agg(a, keys, "angle_deg", "angle")
    out = out.merge(a.groupby(keys, dropna=False)["norm_ratio"].mean().rename("norm_ratio_mean").reset_index(), on=keys)
    grad = _agg(a, keys, "grad_angle_deg", "grad_angle").drop(columns="n")
    out = out.merge(grad, on=keys)
    order = a.groupby(["rule", "layer"], dropna=False)["layer_order"].min().reset_index()
    out = out.merge(order, on=["rule", "layer"])
    out = sort_rows(out, ["kind", "model", "dataset", "bits", "rule", "variant", "layer_order", "epoch"])
    return out[cols]


def alignment_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant x layer: angle(W, B) and |B|/|W| at each run's first logged epoch (0 = before
    training) and at its last; the gradient angle (rule vs true weight gradient, when tracked) at
    the last epoch. Mean ± std over runs (seeds)."""
    a = _alignment(store, f, labels)
    keys = [*KEYS, "layer"]
    values = ["angle_initial", "angle_final", "norm_ratio_initial", "norm_ratio_final", "grad_angle_final"]
    cols = [*keys, *[f"{v}_{s}" for v in values for s in ("mean", "std")], "initial_epoch", "final_epoch", "n"]
    if a.empty:
        return pd.DataFrame(columns=cols)
    first = a.groupby("run_id")["epoch"].transform("min")
    last = a.groupby("run_id")["epoch"].transform("max")
    per_run = ["run_id", "layer"]
    ini = a[a["epoch"] == first].drop_duplicates(per_run, keep="last").set_index(per_run)
    fin = a[a["epoch"] == last].drop_duplicates(per_run, keep="last").set_index(per_run)
    runs = fin[[*keys[:-1], "layer_order", "epoch"]].rename(columns={"epoch": "final_epoch"})
    runs["initial_epoch"] = ini["epoch"].reindex(runs.index)
    runs["angle_initial"] = ini["angle_deg"].reindex(runs.index)
    runs["norm_ratio_initial"] = ini["norm_ratio"].reindex(runs.index)
    runs["angle_final"] = fin["angle_deg"]
    runs["norm_ratio_final"] = fin["norm_ratio"]
    runs["grad_angle_final"] = fin["grad_angle_deg"]
    runs = runs.reset_index()
    out = _agg_each(runs, keys, ["angle_final", *(v for v in values if v != "angle_final")])
    g = runs.groupby(keys, sort=False, dropna=False)
    out = out.merge(g["initial_epoch"].min().reset_index(), on=keys).merge(g["final_epoch"].max().reset_index(), on=keys)
    out = out.merge(g["layer_order"].min().reset_index(), on=keys)
    out = sort_rows(out, ["kind", "model", "dataset", "bits", "rule", "variant", "layer_order"])
    return out[cols]


# -- (4) hashing ----------------------------------------------------------------------------------

def _retrieval_metric(m: Any) -> bool:
    return str(m).startswith(("map", "precision"))


def metric_order(m: str) -> str:
    return ("0" if m.startswith("map") else "1") + m  # mAP@K first, then precision@K


def hashing_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Clean retrieval metrics of trained runs (test evaluations mAP@K and precision@K) per variant x
    bits x metric: mean ± std over seeds."""
    ev = store.frame_evaluations(status="finished", **f.kwargs())
    keys = [*KEYS, "metric"]
    cols = [*keys, "value_mean", "value_std", "n", "seeds"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = ev[ev["kind"].isin(TRAIN_KINDS) & ev["metric"].map(_retrieval_metric) & (ev["split"] == "test")]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = attach_labels(ev, labels_of(store) if labels is None else labels)
    ev = ev.drop_duplicates(["run_id", "metric"], keep="last")
    out = _agg(ev, keys, "value", "value").merge(_seeds(ev, keys), on=keys, how="left")
    out["_m"] = out["metric"].map(metric_order)
    out = sort_rows(out, ["kind", "model", "dataset", "bits", "rule", "variant", "_m"])
    return out[cols]


def hashing_attack_table(store: Any, f: ReportFilter = ReportFilter(), robust: pd.DataFrame | None = None,
                         labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """The mAP sweeps of attack runs (robust table rows whose metric is 'map@K'), bits as a key."""
    r = robust_table(store, f, labels=labels) if robust is None else robust
    return r[r["metric"].map(_retrieval_metric)].reset_index(drop=True) if not r.empty else r


# -- (5) Hessian ----------------------------------------------------------------------------------

def _analysis(store: Any, f: ReportFilter, labels: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Evaluations of finished analysis runs with these metrics, labelled by the analysed run."""
    kw = {k: v for k, v in f.kwargs().items() if k not in ("recipe", "tag")}
    ev = store.frame_evaluations(status="finished", kind="analysis", **kw)
    if ev.empty:
        return ev
    ev = ev[ev["metric"].isin(metrics)]
    if ev.empty:
        return ev
    ev = _subject_filter(attach_labels(ev, labels), labels, f)
    # the seed that makes two rows replicates is the analysed run's, not the analysis job's
    ev["seed"] = labels.loc[ev["run_id"].astype(int).to_numpy(), "seed"].to_numpy()
    return ev


def hessian_runs(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per analysed run x split (its latest Hessian analysis): trace, top eigenvalue (Lanczos,
    else power iteration), loss, and the density / loss-surface params when stored."""
    labels = labels_of(store) if labels is None else labels
    ev = _analysis(store, f, labels, ("hessian_trace", "hessian_top_eig", "hessian_loss", "hessian_density", "loss_surface"))
    cols = ["run_id", "subject", "seed", *KEYS, "split", "trace", "top_eig", "loss", "density", "surface"]
    if ev.empty or not (ev["metric"] == "hessian_trace").any():
        return pd.DataFrame(columns=cols)
    latest = ev[ev["metric"] == "hessian_trace"].groupby(["subject", "split"])["run_id"].max()
    rows = []
    for (subject, split), run_id in latest.items():
        r = ev[ev["run_id"] == run_id]
        top = r[r["metric"] == "hessian_top_eig"]
        methods = [(p or {}).get("method") for p in top["params"]]
        lanczos = top[[m == "lanczos" for m in methods]]
        top_eig = (lanczos if len(lanczos) else top)["value"]
        pick = lambda m: r[r["metric"] == m]  # noqa: E731
        first = r.iloc[0]
        rows.append({
            "run_id": int(run_id), "subject": int(subject), "seed": first["seed"], **{k: first[k] for k in KEYS},
            "split": split, "trace": float(pick("hessian_trace")["value"].iloc[-1]),
            "top_eig": float(top_eig.iloc[-1]) if len(top_eig) else float("nan"),
            "loss": float(pick("hessian_loss")["value"].iloc[-1]) if len(pick("hessian_loss")) else float("nan"),
            "density": pick("hessian_density")["params"].iloc[-1] if len(pick("hessian_density")) else None,
            "surface": pick("loss_surface")["params"].iloc[-1] if len(pick("loss_surface")) else None,
        })
    return pd.DataFrame(rows, columns=cols)


def hessian_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Hessian trace and top eigenvalue per variant x split: mean ± std over seeds (latest analysis per run)."""
    h = hessian_runs(store, f, labels)
    keys = [*KEYS, "split"]
    cols = [*keys, "trace_mean", "trace_std", "top_eig_mean", "top_eig_std", "loss_mean", "loss_std", "n", "seeds"]
    if h.empty:
        return pd.DataFrame(columns=cols)
    out = _agg_each(h, keys, ("trace", "top_eig", "loss")).merge(_seeds(h, keys), on=keys, how="left")
    return sort_rows(out[cols], ["kind", "model", "dataset", "bits", "split", "rule", "variant"])


# -- (5b) over training (analyze trajectory) -----------------------------------------------------

TRAJECTORY_METRICS = ("trajectory_trace", "trajectory_top_eig", "trajectory_loss", "trajectory_pca")


def _latest_per_subject(ev: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows of the newest analysis run per analysed run (subject) x split that stored `metric`."""
    latest = ev[ev["metric"] == metric].groupby(["subject", "split"])["run_id"].max()
    return ev[ev["run_id"].isin(set(latest.to_numpy()))]


def trajectory_points(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per analysed run x split x epoch (its latest trajectory analysis): loss, Hessian trace
    and top eigenvalue at that epoch."""
    labels = labels_of(store) if labels is None else labels
    ev = _analysis(store, f, labels, TRAJECTORY_METRICS[:3])
    cols = ["run_id", "subject", "seed", *KEYS, "split", "epoch", "trace", "top_eig", "loss"]
    if ev.empty or not (ev["metric"] == "trajectory_trace").any():
        return pd.DataFrame(columns=cols)
    ev = _latest_per_subject(ev, "trajectory_trace")
    ev = ev.assign(epoch=[int((p or {}).get("epoch", -1)) for p in ev["params"]])
    names = {"trajectory_trace": "trace", "trajectory_top_eig": "top_eig", "trajectory_loss": "loss"}
    rows = []
    for (_, _, epoch), r in ev.groupby(["run_id", "split", "epoch"], sort=True):
        first = r.iloc[0]
        values = {names[m]: float(v) for m, v in zip(r["metric"], r["value"])}
        rows.append({**{c: first[c] for c in ("run_id", "subject", "seed", *KEYS, "split")}, "epoch": epoch, **values})
    return pd.DataFrame(rows).reindex(columns=cols)


def trajectory_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Loss, Hessian trace and top eigenvalue per variant x split x analysed epoch: mean ± std over seeds."""
    t = trajectory_points(store, f, labels)
    keys = [*KEYS, "split", "epoch"]
    cols = [*keys, "loss_mean", "loss_std", "trace_mean", "trace_std", "top_eig_mean", "top_eig_std", "n", "seeds"]
    if t.empty:
        return pd.DataFrame(columns=cols)
    out = _agg_each(t, keys, ("loss", "trace", "top_eig")).merge(_seeds(t, keys), on=keys, how="left")
    return sort_rows(out[cols], ["kind", "model", "dataset", "bits", "split", "rule", "variant", "epoch"])


def trajectory_planes(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per analysed run x split (latest trajectory analysis with a PCA): the stored plane."""
    labels = labels_of(store) if labels is None else labels
    ev = _analysis(store, f, labels, ("trajectory_pca",))
    cols = ["run_id", "subject", "seed", *KEYS, "split", "explained", "plane"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = _latest_per_subject(ev, "trajectory_pca")
    return ev.assign(explained=ev["value"], plane=ev["params"]).reindex(columns=cols).reset_index(drop=True)


# -- (6) corruptions ------------------------------------------------------------------------------

def corruption_points(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per analysed run: accuracy per corruption x severity (the latest analysis per point), and the
    clean accuracy of its latest corruption analysis."""
    labels = labels_of(store) if labels is None else labels
    ev = _analysis(store, f, labels, ("corruption_accuracy", "accuracy"))
    cols = ["run_id", "subject", "seed", *KEYS, "corruption", "severity", "accuracy"]
    if ev.empty or not (ev["metric"] == "corruption_accuracy").any():
        return pd.DataFrame(columns=cols)
    c = ev[ev["metric"] == "corruption_accuracy"].copy()
    c["corruption"] = [(p or {}).get("corruption") for p in c["params"]]
    c["severity"] = [int((p or {}).get("severity")) for p in c["params"]]
    c = c.sort_values("run_id", kind="stable").drop_duplicates(["subject", "corruption", "severity"], keep="last")
    clean = ev[(ev["metric"] == "accuracy") & ev["run_id"].isin(set(c["run_id"]))].copy()
    clean = clean.sort_values("run_id", kind="stable").drop_duplicates("subject", keep="last")
    clean["corruption"], clean["severity"] = "none", 0
    out = pd.concat([c, clean], ignore_index=True).rename(columns={"value": "accuracy"})
    return out[cols]


def corruption_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Accuracy under corruptions per variant: rows (corruption, severity 1-5) and the means, each
    computed per run first and then mean ± std over seeds:
    (corruption, NaN) = mean over its severities; ('all', s) = mean over corruptions at severity s;
    ('all', NaN) = mean over every corruption x severity (the mean corruption accuracy, mCA);
    ('none', 0) = clean accuracy on the same examples."""
    p = corruption_points(store, f, labels)
    keys = [*KEYS, "corruption", "severity"]
    cols = [*keys, "accuracy_mean", "accuracy_std", "n", "seeds"]
    if p.empty:
        return pd.DataFrame(columns=cols)
    per_run = ["subject", "seed", *KEYS]
    corr = p[p["corruption"] != "none"]
    by_corr = corr.groupby([*per_run, "corruption"], dropna=False)["accuracy"].mean().reset_index()
    by_corr["severity"] = np.nan
    by_sev = corr.groupby([*per_run, "severity"], dropna=False)["accuracy"].mean().reset_index()
    by_sev["corruption"] = "all"
    overall = corr.groupby(per_run, dropna=False)["accuracy"].mean().reset_index()
    overall["corruption"], overall["severity"] = "all", np.nan
    rows = pd.concat([p, by_corr, by_sev, overall], ignore_index=True)
    out = _agg(rows, keys, "accuracy", "accuracy").merge(_seeds(rows, keys), on=keys, how="left")
    first_seen = {c: i for i, c in enumerate(dict.fromkeys(p["corruption"]))}  # stored order: by family
    out["_c"] = out["corruption"].map(lambda c: 10_000 + (c == "none") if c in ("all", "none") else first_seen[c])
    out["_s"] = out["severity"].fillna(99)
    out = sort_rows(out, ["kind", "model", "dataset", "bits", "rule", "variant", "_c", "_s"])
    return out[cols]


# -- trainability map (ssbench analyze trainability) ---------------------------------------------

def trainability_points(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per map x cell: the cell run's final training accuracy, its variances, the cell run and
    whether its loss turned non-finite. Maps of one configuration and seed share their cells: the
    latest map's row counts (a rerun map is not a second seed)."""
    from ssbench.analysis.trainability import METRIC, NONFINITE

    labels = labels_of(store) if labels is None else labels
    ev = _analysis(store, f, labels, (METRIC,))
    cols = ["run_id", "subject", "seed", *KEYS, "weight_var", "feedback_var", "accuracy", "nonfinite", "cell_run"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    params = [p or {} for p in ev["params"]]
    ev = ev.assign(weight_var=[float(p["weight_var"]) for p in params], feedback_var=[float(p["feedback_var"]) for p in params],
                   nonfinite=[p.get("diverged") == NONFINITE for p in params], cell_run=[p.get("cell_run") for p in params])
    ev = ev.sort_values("run_id", kind="stable").drop_duplicates([*KEYS, "seed", "weight_var", "feedback_var"], keep="last")
    return ev.rename(columns={"value": "accuracy"})[cols].reset_index(drop=True)


def trainability_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final training accuracy per map configuration x (weight_var, feedback_var): mean ± std over
    seeds; nonfinite = seeds whose loss turned non-finite (scored at chance)."""
    p = trainability_points(store, f, labels)
    keys = [*KEYS, "weight_var", "feedback_var"]
    cols = [*keys, "accuracy_mean", "accuracy_std", "n", "nonfinite", "seeds"]
    if p.empty:
        return pd.DataFrame(columns=cols)
    out = _agg(p, keys, "accuracy", "accuracy")
    out = out.merge(p.groupby(keys, sort=False, dropna=False)["nonfinite"].sum().astype(int).reset_index(), on=keys)
    out = out.merge(_seeds(p, keys), on=keys, how="left")
    return sort_rows(out[cols], ["model", "dataset", "bits", "rule", "variant", "feedback_var", "weight_var"])


# -- (7) sanity -----------------------------------------------------------------------------------


def sanity_table(store: Any, f: ReportFilter = ReportFilter(), labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Sanity checks that FAILED, with the attacked model's rule / model / dataset labels and seed."""
    s = store.frame_sanity(**f.kwargs())
    cols = ["run", "target", "rule", "model", "dataset", "seed", "check", "attack", "mode", "value", "detail"]
    if s.empty:
        return pd.DataFrame(columns=cols)
    s = s[s["passed"].notna() & s["passed"].map(lambda v: v is False or v == 0)].copy()
    if s.empty:
        return pd.DataFrame(columns=cols)
    labels = labels_of(store) if labels is None else labels
    lab = labels.reindex(s["run_id"].astype(int).to_numpy())
    for c in ("rule", "model", "dataset"):  # a run newer than the labels keeps its bare names
        s[c] = [new if isinstance(new, str) else old for new, old in zip(lab[c], s[c])]
    runs = store.frame_runs().set_index("id")
    s["target_id"] = s["parent_id"]
    s["seed"] = [runs["seed"].get(int(t)) if pd.notna(t) and int(t) in runs.index else None for t in s["target_id"]]
    s = s.rename(columns={"name": "check", "run_id": "run", "target_id": "target"})
    return sort_rows(s[cols], ["run"])
