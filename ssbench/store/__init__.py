"""The results store: every number of the pipeline, in one database (SQLite by default, any
SQLAlchemy URL for teams). Migrations run on open.

    store = open_store()                      # SSBENCH_DB or sqlite:///<SSBENCH_HOME>/results.db
    with store.run("finetune", config=spec, rule="fa", ...) as rec:
        rec.log_epoch(1, "val", {"accuracy": 0.9})
        rec.add_sweep([SweepPoint(...), ...])   # one transaction per sweep
    store.frame_sweeps()                       # pandas, joined to the attacked model run
"""
from __future__ import annotations

from ssbench.store.models import (
    Alignment,
    Base,
    Checkpoint,
    Evaluation,
    Metric,
    Run,
    SanityCheckRow,
    SweepPointRow,
)
from ssbench.store.records import AlignmentRow, SanityCheck, SweepPoint
from ssbench.store.store import (
    RunContext,
    RunRecorder,
    Store,
    canonical_json,
    config_hash,
    file_sha256,
    open_store,
)

__all__ = [
    "open_store", "Store", "RunRecorder", "RunContext", "config_hash", "canonical_json", "file_sha256",
    "SweepPoint", "SanityCheck", "AlignmentRow",
    "Base", "Run", "Metric", "Alignment", "Evaluation", "SweepPointRow", "SanityCheckRow", "Checkpoint",
]
