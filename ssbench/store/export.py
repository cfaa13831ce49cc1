"""Runs as plain JSON values: what `ssbench runs --json` and `ssbench show RUN --json` print.

Every value is the stored one: floats as the database holds them (Python's float repr round-trips a
double exactly), JSON columns (config, summary, params) as stored, times as ISO 8601 text, a NULL
(a NaN metric included) as null. Keys are stable: a run's are the columns of the `runs` table
(`RUN_KEYS`, docs/schema.md), a child row's the columns of its table less `id` and `run_id`.

    run_record(store, run)    # the run's own row, plus `liveness`
    run_details(store, run)   # the row, plus its metrics, alignment, evaluations, checkpoints,
                              # sweep points, sanity checks and child run ids
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ssbench.store.models import Alignment, Evaluation, Metric, Run, SanityCheckRow, SweepPointRow

if TYPE_CHECKING:
    from ssbench.store.store import Store

# every column of `runs`, the long ones last (what a reader of the JSON looks at first comes first)
_LONG = ("error", "traceback", "config", "summary")
RUN_KEYS = tuple(c.name for c in Run.__table__.columns if c.name not in _LONG) + _LONG
# child tables in the order `show` prints them: (key in the JSON, ORM class)
CHILD_TABLES = (("metrics", Metric), ("alignment", Alignment), ("evaluations", Evaluation),
                ("sweeps", SweepPointRow), ("sanity_checks", SanityCheckRow))
CHECKPOINT_KEYS = ("tag", "epoch", "metric", "sha256", "path", "created_at")


def _value(v: Any) -> Any:
    """A stored value as JSON: times as ISO 8601, a non-finite float (never stored; be safe) as null."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v


def _row(row: Any, keys: Sequence[str]) -> dict[str, Any]:
    return {k: _value(getattr(row, k)) for k in keys}


def run_record(store: Store, run: Run) -> dict[str, Any]:
    """Every column of the run's row, and `liveness` of a 'running' run (see `Store.liveness`)."""
    return {**_row(run, RUN_KEYS), "liveness": store.liveness(run)}


def _child_keys(table: Any) -> tuple[str, ...]:
    return tuple(c.name for c in table.__table__.columns if c.name not in ("id", "run_id"))


def run_details(store: Store, run: Run) -> dict[str, Any]:
    """`run_record`, then one list per child table (rows in the order written), the checkpoints
    (`path` resolved against the store's artifact root, as `Store.checkpoints` gives it) and the
    ids of the runs made from this one (`children`)."""
    out = run_record(store, run)
    with store.session() as s:
        for key, table in CHILD_TABLES:
            keys = _child_keys(table)
            rows = s.scalars(select(table).where(table.run_id == run.id).order_by(table.id))
            out[key] = [_row(r, keys) for r in rows]
    out["checkpoints"] = [_row(c, CHECKPOINT_KEYS) for c in store.checkpoints(run.id)]
    out["children"] = [k.id for k in store.children(run.id)]
    return out


def dumps(value: Any) -> str:
    """JSON text for the terminal or a pipe: indented, ASCII only (so no control character of a
    stored tag or error reaches a terminal raw), NaN refused (it is not JSON)."""
    # json escapes the C0 controls and (ensure_ascii) everything above DEL, but not DEL itself
    return json.dumps(value, indent=2, ensure_ascii=True, allow_nan=False).replace("\x7f", "\\u007f")
