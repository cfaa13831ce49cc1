"""What `ssbench runs` and `ssbench show` say about stored runs beyond the stored values.

    labels(store, runs)          variant labels (`ifa(θ=30)`, `mlp[256x3]`, `digits[0-4]`) of each run;
                                 an attack or analysis run takes those of the run it attacked or
                                 analysed, as the report groups it (report/variants.py)
    test_metrics(store, runs)    each run's test-split evaluations, {run id: {metric: value}}
    key_metric(run, metrics)     one number that says how a run went
    compact(value)               a stored value in one short line: floats to 4 significant digits,
                                 long lists cut to their first items and a count (`show` without --full)
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ssbench.errors import RunNotFoundError
from ssbench.report.variants import CHILD_KINDS, dataset_label, model_label, rule_label
from ssbench.store.models import Evaluation

if TYPE_CHECKING:
    from ssbench.store import Run, Store

LIST_ITEMS = 5  # a list longer than LIST_MAX shows its first LIST_ITEMS items and a count
LIST_MAX = 8
DIGITS = 4  # significant digits of a float


def labels(store: Store, runs: Sequence[Run]) -> dict[int, dict[str, str]]:
    """{run id: {"rule", "model", "dataset"}}: the labels of the run the numbers are about (an
    attack's target: its own config names no data set or widths)."""
    by_id = {r.id: r for r in runs}
    for pid in {r.parent_id for r in runs if r.kind in CHILD_KINDS and r.parent_id is not None} - by_id.keys():
        try:
            by_id[pid] = store.get_run(pid)
        except RunNotFoundError:  # a parent removed since (parent_id is then NULL; be safe)
            pass
    out = {}
    for r in runs:
        s = by_id.get(r.parent_id, r) if r.kind in CHILD_KINDS and r.parent_id is not None else r
        out[r.id] = {"rule": rule_label(s.config, s.rule or ""), "model": model_label(s.config, s.model or ""),
                     "dataset": dataset_label(s.config, s.dataset or "")}
    return out


def test_metrics(store: Store, runs: Sequence[Run]) -> dict[int, dict[str, float | None]]:
    """{run id: {metric: value}} of the runs' test-split evaluations (the last row per metric)."""
    ids = [r.id for r in runs]
    out: dict[int, dict[str, float | None]] = {}
    with store.session() as s:
        stmt = select(Evaluation).where(Evaluation.run_id.in_(ids), Evaluation.split == "test").order_by(Evaluation.id)
        for e in s.scalars(stmt):
            out.setdefault(e.run_id, {})[e.metric] = e.value
    return out


def key_metric(run: Run, metrics: dict[int, dict[str, float | None]]) -> str:
    """Test accuracy (or mAP) of a training run, an attack's worst case over gradient modes at its
    largest ε, or the error of a failed run."""
    if run.status == "failed":
        return (run.error or "failed")[:40]
    worst = (run.summary or {}).get("worst_case")
    if isinstance(worst, dict) and worst:
        eps, value = max(((float(k), v) for k, v in worst.items() if v is not None), default=(None, None))
        if eps is not None:
            return f"worst {value:.3f} @ε={eps:g}"
    ev = metrics.get(run.id, {})
    for name in ("accuracy", *sorted(k for k in ev if k.startswith("map"))):
        if ev.get(name) is not None:
            return f"{'acc' if name == 'accuracy' else name} {ev[name]:.3f}"
    return ""


def compact(value: Any, *, quote: bool = False) -> str:
    """`value` as one line of JSON-like text, rounded and cut: `[44, 90, 85, 78, 23, …] (40 items)`,
    `{"0": 0.6, "0.1": 0.025}`, a string bare unless inside a list or dict. For reading; `show --full`
    and `--json` print the stored values."""
    if isinstance(value, str) and not quote:
        return value
    if isinstance(value, float):
        return f"{value:.{DIGITS}g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quoted(k)}: {compact(v, quote=True)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        items = [compact(v, quote=True) for v in value[:LIST_ITEMS if len(value) > LIST_MAX else None]]
        return "[" + ", ".join(items) + (f", …] ({len(value)} items)" if len(items) < len(value) else "]")
    return json.dumps(value, ensure_ascii=False)


def _quoted(key: Any) -> str:
    return json.dumps(str(key), ensure_ascii=False)
