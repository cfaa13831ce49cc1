"""Each reported run's provenance, read from the store: configuration, seed, git commit, package
versions, where and when it ran. What the HTML report lists under "Runs".

A finished run is listed when it, or the run it attacked / analysed, passes the report's filter;
the runs it started from (its parents, e.g. the pretrain of a fine-tune) are listed too, since its
numbers rest on them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from ssbench.report.tables import ReportFilter, labels_of


@dataclass(frozen=True)
class RunProvenance:
    """One run as stored; `rule` / `model` / `dataset` are the report's variant labels (those of the
    attacked / analysed run for attack and analysis runs), so a run reads like the table rows it
    feeds. Fields the store does not have for a run are None (empty dict / tuple)."""

    id: int
    kind: str
    rule: str | None = None
    model: str | None = None
    dataset: str | None = None
    seed: int | None = None
    parent: int | None = None
    recipe: str | None = None
    tags: tuple[str, ...] = ()
    git_commit: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    host: str | None = None
    started: datetime | None = None
    seconds: float | None = None
    config_hash: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _value(v: Any) -> Any:
    """None for SQL NULL / pandas NaN / NaT, else the value."""
    if v is None or (not isinstance(v, (dict, list, tuple, str)) and pd.isna(v)):
        return None
    return v


def _int(v: Any) -> int | None:
    v = _value(v)
    return None if v is None else int(v)


def _str(v: Any) -> str | None:
    v = _value(v)
    return None if v is None or v == "" else str(v)


def _passes(row: Any, f: ReportFilter) -> bool:
    for key in ("recipe", "rule", "model", "dataset"):
        want = getattr(f, key)
        if want is not None and row[key] != want:
            return False
    return f.tag is None or (isinstance(row["tags"], list) and f.tag in row["tags"])


def run_provenance(store: Any, f: ReportFilter = ReportFilter()) -> list[RunProvenance]:
    """The provenance of every finished run behind a report with filter `f`, plus the runs they
    started from, in run id order."""
    runs = store.frame_runs()
    if runs.empty:
        return []
    by_id = runs.set_index("id", drop=False)
    labels = labels_of(store)
    finished = runs[runs["status"] == "finished"]
    keep: set[int] = set()
    for rid in finished["id"].astype(int):
        row = by_id.loc[rid]
        subject = int(labels.loc[rid, "subject"]) if rid in labels.index else rid
        if _passes(row, f) or (subject != rid and _passes(by_id.loc[subject], f)):
            keep.add(rid)
    for rid in list(keep):  # the chain each kept run started from
        parent = _int(by_id.loc[rid, "parent_id"])
        while parent is not None and parent in by_id.index and parent not in keep:
            keep.add(parent)
            parent = _int(by_id.loc[parent, "parent_id"])
    out = []
    for rid in sorted(keep):
        r = by_id.loc[rid]
        lab = labels.loc[rid] if rid in labels.index else None
        label = (lambda c: _str(lab[c]) if lab is not None else _str(r[c]))  # noqa: E731
        started = _value(r["started_at"])
        out.append(RunProvenance(
            id=rid, kind=str(r["kind"]), rule=label("rule"), model=label("model"), dataset=label("dataset"),
            seed=_int(r["seed"]), parent=_int(r["parent_id"]), recipe=_str(r["recipe"]),
            tags=tuple(r["tags"]) if isinstance(r["tags"], list) else (), git_commit=_str(r["git_commit"]),
            versions={str(k): str(v) for k, v in (r["versions"] or {}).items() if v},
            device=_str(r["device"]), host=_str(r["host"]),
            started=pd.Timestamp(started).to_pydatetime() if started is not None else None,
            seconds=None if _value(r["seconds"]) is None else float(r["seconds"]), config_hash=_str(r["config_hash"]),
            config=r["config"] if isinstance(r["config"], dict) else {},
        ))
    return out
