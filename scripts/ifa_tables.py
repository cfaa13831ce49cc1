"""The IFA grid tables of docs/results.md section 5b, pivoted from `ssbench report`'s frames.

    python scripts/ifa_tables.py --db sqlite:///results.db [--artifacts DIR]

Reads only the store (recipes ifa-angle, ifa-depth, ifa-depth-he and the analyses of their runs);
every cell is mean ± std over the seeds found, from `ssbench.report.build_tables`.
"""
from __future__ import annotations

import argparse
import re

import pandas as pd

from ssbench.report.render import to_markdown
from ssbench.report import build_tables
from ssbench.report.tables import ReportFilter
from ssbench.store import open_store

RULE_ORDER = ["bp", "fa", *[f"ifa(θ={t})" for t in (0, 15, 30, 45, 60, 75, 90)]]


def cell(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if pd.isna(mean):
        return ""
    s = f"{scale * mean:.{digits}f}"
    return s + ("" if pd.isna(std) else f" ± {scale * std:.{digits}f}")


def train_size(dataset: str) -> int:
    m = re.search(r"train=(\d+)", dataset)
    return int(m.group(1)) if m else -1


def layers(model: str) -> int:
    m = re.search(r"mlp\[256(?:x(\d+))?\]", model)
    return (int(m.group(1) or 1) + 1) if m else -1


def failed_runs(store, recipe: str) -> list[tuple[str, int, int]]:  # noqa: ANN001
    """(rule label, layers, failed seeds) of the recipe's training runs that failed and never finished."""
    finished = {r.config_hash for r in store.list_runs(status="finished", recipe=recipe)}
    seen: dict[tuple[str, int], set[int]] = {}
    for r in store.list_runs(status="failed", recipe=recipe):
        if r.config_hash in finished:
            continue  # retried and finished
        cfg = r.config or {}
        theta = cfg.get("rule", {}).get("theta")
        label = r.rule if theta is None else f"{r.rule}(θ={theta:g})"
        seen.setdefault((label, len(cfg["model"].get("hidden") or ()) + 1), set()).add(r.seed)
    return [(label, n, len(seeds)) for (label, n), seeds in sorted(seen.items())]


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    return df.reindex([r for r in RULE_ORDER if r in df.index])


def markdown(df: pd.DataFrame, index: str) -> str:
    out = df.rename_axis(index).reset_index()
    return to_markdown(out.set_axis([str(c) for c in out.columns], axis=1).fillna(""), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--artifacts", default=None)
    a = ap.parse_args()
    store = open_store(a.db, artifacts=a.artifacts)

    clean = build_tables(store, ReportFilter(recipe="ifa-angle"), "clean")["clean"]
    clean = clean.assign(size=clean["dataset"].map(train_size), cell=[cell(m, s) for m, s in zip(clean["accuracy_mean"], clean["accuracy_std"])])
    seeds = sorted({s for v in clean["seeds"] for s in str(v).split(",") if s})
    print(f"## accuracy vs angle and training-set size (test accuracy %, seeds {','.join(seeds)})\n")
    print(markdown(ordered(clean.pivot(index="rule", columns="size", values="cell")), "rule"), "\n")

    for recipe in ("ifa-depth", "ifa-depth-he"):
        depth = build_tables(store, ReportFilter(recipe=recipe), "clean").get("clean")
        if depth is None or depth.empty:
            continue
        depth = depth.assign(layers=depth["model"].map(layers), cell=[cell(m, s) for m, s in zip(depth["accuracy_mean"], depth["accuracy_std"])])
        table = ordered(depth.pivot(index="rule", columns="layers", values="cell"))
        for rule, n_layers, count in failed_runs(store, recipe):  # a mean over the survivors alone would flatter
            label = f"{count} diverged"
            old = table.at[rule, n_layers] if rule in table.index and n_layers in table.columns else None
            table.loc[rule, n_layers] = label if old is None or pd.isna(old) or old == "" else f"{old} ({label})"
        print(f"## {recipe}: test accuracy % vs number of layers (mean ± std over the seeds that finished)\n")
        print(markdown(ordered(table[sorted(table.columns)]), "rule"), "\n")

    hess = build_tables(store, ReportFilter(recipe="ifa-angle"), "hessian")["hessian"]
    if not hess.empty:
        hess = hess.set_index("rule")
        out = pd.DataFrame({
            "trace": [cell(m, s, 1.0, 0) for m, s in zip(hess["trace_mean"], hess["trace_std"])],
            "top eigenvalue": [cell(m, s, 1.0, 1) for m, s in zip(hess["top_eig_mean"], hess["top_eig_std"])],
            "loss": [cell(m, s, 1.0, 3) for m, s in zip(hess["loss_mean"], hess["loss_std"])],
        }, index=hess.index)
        print("## Hessian of the training loss at the exported weights (10,000 images; n = 512)\n")
        print(markdown(ordered(out), "rule"), "\n")

    traj = build_tables(store, ReportFilter(recipe="ifa-angle"), "trajectory").get("trajectory")
    if traj is not None and not traj.empty:
        piv = traj.assign(cell=[cell(m, s, 1.0, 0) for m, s in zip(traj["trace_mean"], traj["trace_std"])])
        print("## Hessian trace over training (kept epochs; 10,000 images)\n")
        print(markdown(ordered(piv.pivot(index="rule", columns="epoch", values="cell")), "rule"), "\n")

    robust = build_tables(store, ReportFilter(recipe="ifa-angle"), "robust")["robust"]
    if not robust.empty:
        r = robust[(robust["dataset"].map(train_size) == 10000) & (robust["epsilon"] > 0)]
        r = r.assign(col=[f"{m} ε={e:g}" for m, e in zip(r["mode"], r["epsilon"])],
                     cell=[cell(m, s) for m, s in zip(r["robust_mean"], r["robust_std"])])
        cols = [f"{m} ε={e:g}" for m in ("exact", "feedback", "worst") for e in sorted(r["epsilon"].unique())]
        piv = r.pivot(index="rule", columns="col", values="cell")
        print("## PGD-40 robust accuracy % (500 test images, 10,000 training images)\n")
        print(markdown(ordered(piv[[c for c in cols if c in piv.columns]]), "rule"), "\n")


if __name__ == "__main__":
    main()
