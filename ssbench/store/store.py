"""The results store: runs written in transactions, queries, and pandas loaders for the report."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import traceback as tb
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
from pydantic import BaseModel
from sqlalchemy import Engine, Select, func, select, update
from sqlalchemy.orm import aliased, sessionmaker

from ssbench.errors import RunNotFoundError, SsbenchError, StorageError
from ssbench.store import artifacts as _artifacts
from ssbench.store import temporaries as _temporaries
from ssbench.store.artifacts import file_sha256
from ssbench.store.engine import default_home, make_engine, migrate, resolve_url, sqlite_file
from ssbench.store.models import (
    Alignment,
    Checkpoint,
    Evaluation,
    Metric,
    Run,
    SanityCheckRow,
    SweepPointRow,
)
from ssbench.store.processes import process_started_before as _process_started_before
from ssbench.store.records import AlignmentRow, SanityCheck, SweepPoint

RUN_REF_FIELDS = ("source", "target", "surrogate")  # spec fields that may hold a run id (job_hash)
VERSIONED_PACKAGES = ("torch", "torchvision", "ssbench", "torchattacks", "foolbox", "numpy")
ERROR_LINE_MAX = 500


# -- helpers ------------------------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(timezone.utc)


def _num(v: Any) -> float | None:
    """float, with NaN / inf -> None (SQLite stores NaN as NULL anyway; be explicit everywhere)."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _opt_float(v: Any) -> float | None:
    """float or None; NaN is kept (a NOT NULL column then refuses it instead of storing a gap)."""
    return None if v is None else float(v)


def jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy / torch scalars and arrays, paths, tuples; NaN / inf -> None
    (PostgreSQL's JSON refuses NaN)."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, BaseModel):
        return jsonable(obj.model_dump(mode="json"))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    return str(obj)


def canonical_json(obj: Any) -> str:
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a spec: equal configurations hash equal (recipe resume)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


@lru_cache(maxsize=8)
def _git_commit(cwd: str) -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    """HEAD of the git repository holding the ssbench source that runs, '-dirty' when tracked files
    changed; None for an installed (non-editable) package, whose version is in `versions`.

    Not the working directory's repository: a user running ssbench from their own project would
    otherwise record *their* commit as the code that produced the numbers."""
    source = Path(__file__).resolve().parents[2]  # .../ssbench/store/store.py -> checkout root
    if not (source / ".git").exists():
        return None
    return _git_commit(str(source))


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["ssbench"] is None:
        from ssbench import __version__

        out["ssbench"] = __version__
    out["python"] = platform.python_version()
    return out


def error_line(exc: BaseException) -> str:
    """`ExceptionType: first line of the message`, capped: how a failed run's error is stored."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= ERROR_LINE_MAX else line[: ERROR_LINE_MAX - 3] + "..."


# -- writing ------------------------------------------------------------------------------------

class RunRecorder:
    """Writes the rows of one run; every call is its own committed transaction."""

    def __init__(self, store: Store, run_id: int) -> None:
        self._store = store
        self.run_id = run_id

    def _add(self, rows: Iterable[Any]) -> None:
        with self._store.session() as s, s.begin():
            s.add_all(list(rows))
            self._touch(s)

    def _touch(self, session: Any) -> None:
        """Heartbeat: every write says the run's process is still alive (see `Store.liveness`)."""
        session.execute(update(Run).where(Run.id == self.run_id).values(heartbeat_at=_now()))

    def log_epoch(self, epoch: int, split: str, metrics: dict[str, float], seconds: float | None = None) -> None:
        self._add(Metric(run_id=self.run_id, epoch=int(epoch), split=split, name=str(k), value=_num(v), seconds=_num(seconds))
                  for k, v in metrics.items())

    def log_alignment(self, epoch: int, rows: Sequence[AlignmentRow]) -> None:
        self._add(Alignment(run_id=self.run_id, epoch=int(epoch), layer=r.layer, angle_deg=_num(r.angle_deg),
                            norm_ratio=_num(r.norm_ratio), grad_angle_deg=_num(r.grad_angle_deg)) for r in rows)

    def log_evaluation(self, metric: str, value: float, split: str = "test", params: dict[str, Any] | None = None) -> None:
        self._add([Evaluation(run_id=self.run_id, metric=metric, value=_num(value), split=split, params=jsonable(params or {}))])

    def add_checkpoint(self, tag: str, path: str | Path, epoch: int | None = None, metric: float | None = None) -> None:
        """Record a checkpoint file (its sha256 is computed now); a second call with a tag replaces the first.
        The path is stored relative to the artifact root, so the results folder can move."""
        path = Path(path)
        digest = file_sha256(path)
        stored = _artifacts.to_stored(path, self._store.artifacts)
        with self._store.session() as s, s.begin():
            old = s.scalars(select(Checkpoint).where(Checkpoint.run_id == self.run_id, Checkpoint.tag == tag)).all()
            for row in old:
                s.delete(row)
            s.flush()
            s.add(Checkpoint(run_id=self.run_id, tag=tag, path=stored, sha256=digest,
                             epoch=epoch, metric=_num(metric), created_at=_now()))
            self._touch(s)

    def add_sweep(self, points: Sequence[SweepPoint]) -> None:
        """All points of one sweep in one transaction: a failure stores none of them."""
        if not points:
            return
        with self._store.session() as s, s.begin():
            last = s.scalar(select(func.max(SweepPointRow.sweep)).where(SweepPointRow.run_id == self.run_id))
            sweep = 0 if last is None else last + 1
            s.add_all(
                SweepPointRow(
                    run_id=self.run_id, sweep=sweep, attack=p.attack, mode=p.mode, epsilon=_opt_float(p.epsilon),
                    n=None if p.n is None else int(p.n), robust=_opt_float(p.robust), metric=p.metric,
                    seconds=float(p.seconds or 0.0), params=jsonable(p.params or {}), correct=p.correct,
                )
                for p in points
            )
            self._touch(s)

    def add_sanity(self, checks: Sequence[SanityCheck]) -> None:
        self._add(SanityCheckRow(run_id=self.run_id, name=c.name, passed=None if c.passed is None else bool(c.passed),
                                 value=_num(c.value), detail=c.detail or "", attack=c.attack, mode=c.mode)
                  for c in checks)

    def set_summary(self, **kv: Any) -> None:
        """Merge key/values into the run's summary JSON."""
        with self._store.session() as s, s.begin():
            run = s.get(Run, self.run_id)
            assert run is not None
            run.summary = {**(run.summary or {}), **jsonable(kv)}
            run.heartbeat_at = _now()


class RunContext:
    """`with store.run(...) as rec:` -- 'running' at entry; 'finished' or 'failed' (any exception) at exit."""

    def __init__(self, store: Store, row: Run) -> None:
        self._store, self._row = store, row
        self._t0 = 0.0
        self.recorder: RunRecorder | None = None

    def __enter__(self) -> RunRecorder:
        self._t0 = time.perf_counter()
        with self._store.session() as s, s.begin():
            s.add(self._row)
        # temporaries a killed earlier run of this job left in its checkpoint folder are never loaded
        with self._store.session() as s:
            earlier = s.scalars(select(Run.id).where(Run.kind == self._row.kind, Run.config_hash == self._row.config_hash,
                                                     Run.id != self._row.id)).all()
        self._store.remove_stale_temporaries([*earlier, self._row.id])
        self.recorder = RunRecorder(self._store, self._row.id)
        return self.recorder

    def _record_end(self, values: dict[str, Any]) -> None:
        with self._store.session() as s, s.begin():
            run = s.get(Run, self._row.id)
            if run is not None:
                for k, v in values.items():
                    setattr(run, k, v)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None) -> bool:
        seconds = time.perf_counter() - self._t0
        values: dict[str, Any] = {"finished_at": _now(), "seconds": seconds}
        if exc is None:
            values["status"] = "finished"
        else:
            values.update(status="failed", error=error_line(exc),
                          traceback="".join(tb.format_exception(exc_type, exc, trace)))
        try:
            self._record_end(values)
        except Exception:  # noqa: BLE001
            # once more on a fresh connection, with our own temporaries gone: after a full disk
            # they may hold the space SQLite needs to write this one row
            self._store.engine.dispose()
            _temporaries.remove_own(self._store.checkpoint_dir(self._row.id))
            try:
                self._record_end(values)
            except Exception as err:  # noqa: BLE001
                if exc is None:
                    raise
                self._unrecorded(exc, err)
        return False  # never swallow the exception

    def _unrecorded(self, exc: BaseException, err: Exception) -> None:
        """The run failed and the store cannot record it: one line says both (the run stays 'running'
        until `ssbench runs --fail-stale` sees its process gone)."""
        why = "the store cannot be written either" if isinstance(err, StorageError) else error_line(err)
        note = f"run {self._row.id} is left 'running' ({why}); `ssbench runs --fail-stale` marks it failed later"
        if isinstance(exc, SsbenchError):
            raise StorageError(f"{exc}; {note}") from exc
        print(f"ssbench: {note}", file=sys.stderr)  # a bug or an interrupt: its own traceback follows


# -- the store ----------------------------------------------------------------------------------

def _apply_run_filters(stmt: Select, table: Any = Run, **filters: Any) -> Select:
    for key, value in filters.items():
        if value is None:
            continue
        column = getattr(table, key)
        if isinstance(value, (list, tuple, set)):
            stmt = stmt.where(column.in_(list(value)))
        else:
            stmt = stmt.where(column == value)
    return stmt


def _has_tag(tags: Any, tag: str | None) -> bool:
    return tag is None or (isinstance(tags, list) and tag in tags)


def _resolved(row: Checkpoint, root: Path) -> Checkpoint:
    # the row is detached (its session closed): the resolved path is never written back
    row.path = str(_artifacts.resolve(row.path, root, run_id=row.run_id))
    return row


class Store:
    """One results database. Build it with `open_store`."""

    def __init__(self, engine: Engine, artifacts: Path, url: str) -> None:
        self.engine = engine
        self.artifacts = artifacts  # root of checkpoints and retrieval splits (see `open_store`)
        self.home = artifacts  # the older name, kept for callers that still use it
        self.url = url
        self.session = sessionmaker(engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def checkpoint_dir(self, run_id: int) -> Path:
        return self.artifacts / _artifacts.CHECKPOINTS / str(run_id)

    def job_hash(self, config: BaseModel | dict[str, Any]) -> str:
        """The identity of a job: `config_hash` of its spec, where a field naming a run of this
        store (a fine-tune's source, an attack's target or surrogate) names that run's own job hash
        instead of its row id. So the same experiment hashes the same in every store and under every
        executor, whatever order the runs were numbered in; runs record it as `config_hash`."""
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        refs = {f: int(v.strip().lstrip("#")) for f in RUN_REF_FIELDS
                if isinstance(v := data.get(f), str) and v.strip().lstrip("#").isdigit()}
        if refs:
            with self.session() as s:
                for f, run_id in refs.items():
                    run = s.get(Run, run_id)
                    if run is not None:
                        data[f] = f"run:{run.config_hash}"
        return config_hash(data)

    # writing
    def run(
        self,
        kind: str,
        *,
        config: BaseModel,
        seed: int | None = None,
        parent_id: int | None = None,
        recipe: str | None = None,
        tags: Sequence[str] = (),
        rule: str | None = None,
        model: str | None = None,
        dataset: str | None = None,
        task: str | None = None,
        device: str | None = None,
    ) -> RunContext:
        """A run as a context manager yielding its `RunRecorder`. The row is committed as 'running' at
        entry; on exit it is 'finished', or 'failed' with the error for ANY exception (also
        KeyboardInterrupt), which is re-raised."""
        data = config.model_dump(mode="json")
        row = Run(
            kind=kind, status="running", recipe=recipe, tags=list(tags), config=jsonable(data),
            config_hash=self.job_hash(data), seed=seed, rule=rule, model=model, dataset=dataset, task=task,
            parent_id=parent_id, git_commit=git_commit(), versions=package_versions(), device=device,
            host=socket.gethostname(), pid=os.getpid(), started_at=_now(), heartbeat_at=_now(), summary={},
        )
        return RunContext(self, row)

    # queries
    def get_run(self, ref: int | str) -> Run:
        try:
            run_id = int(str(ref).strip().lstrip("#"))
        except ValueError:
            raise RunNotFoundError(f"run {ref!r} is not a run id; list runs with `ssbench runs`") from None
        with self.session() as s:
            run = s.get(Run, run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id} in {self!r}; list runs with `ssbench runs`")
        return run

    def list_runs(
        self,
        kind: str | None = None,
        status: str | None = None,
        rule: str | None = None,
        model: str | None = None,
        dataset: str | None = None,
        recipe: str | None = None,
        tag: str | None = None,
        parent_id: int | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Runs matching every given filter, oldest first (`limit` keeps the newest)."""
        stmt = _apply_run_filters(select(Run), kind=kind, status=status, rule=rule, model=model, dataset=dataset,
                                  recipe=recipe, parent_id=parent_id).order_by(Run.id.desc())
        with self.session() as s:
            runs = [r for r in s.scalars(stmt) if _has_tag(r.tags, tag)]
        if limit is not None:
            runs = runs[:limit]
        return runs[::-1]

    def find_finished(self, kind: str, config_hash: str) -> Run | None:
        """The newest finished run of `kind` with this configuration hash (recipe resume)."""
        stmt = (select(Run).where(Run.kind == kind, Run.config_hash == config_hash, Run.status == "finished")
                .order_by(Run.id.desc()).limit(1))
        with self.session() as s:
            return s.scalars(stmt).first()

    def checkpoint(self, run_id: int, tag: str = "best") -> Checkpoint:
        """The checkpoint row of `run_id` with `tag`; its `path` is resolved against this store's
        artifact root (the database holds it relative). Not verified here: see `artifacts.verify`."""
        with self.session() as s:
            row = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.tag == tag)).first()
            if row is None:
                tags = s.scalars(select(Checkpoint.tag).where(Checkpoint.run_id == run_id)).all()
        if row is None:
            self.get_run(run_id)  # unknown run: say so
            from ssbench.errors import CheckpointError

            have = ", ".join(sorted(tags)) or "none"
            raise CheckpointError(f"run {run_id} has no checkpoint {tag!r} (it has: {have})")
        return _resolved(row, self.artifacts)

    def checkpoints(self, run_id: int) -> list[Checkpoint]:
        """All checkpoint rows of a run, paths resolved as in `checkpoint`."""
        with self.session() as s:
            rows = list(s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.id)))
        return [_resolved(r, self.artifacts) for r in rows]

    def liveness(self, run: Run) -> str | None:
        """For a 'running' run: 'alive' (its process exists on this host), 'gone' (it ran on this
        host and its process has ended: SIGKILL, out of memory, power loss), 'unknown' (another host,
        or no pid recorded); None for finished and failed runs."""
        if run.status != "running":
            return None
        if run.pid is None or run.host != socket.gethostname():
            return "unknown"
        return "alive" if _process_started_before(run.pid, run.started_at) else "gone"

    def remove_stale_temporaries(self, run_ids: Iterable[int] | None = None) -> list[Path]:
        """Remove the temporaries no live writer holds (see `temporaries.is_stale`) from these runs'
        checkpoint folders (None: all of them); the ones removed."""
        folders = [self.artifacts / _artifacts.CHECKPOINTS] if run_ids is None else map(self.checkpoint_dir, run_ids)
        return [tmp for folder in folders for tmp in _temporaries.remove_stale(folder)]

    def fail_stale(self) -> list[int]:
        """Mark failed every 'running' run whose process is gone (same host only: a pid on another
        host says nothing here), and remove stale temporaries from every checkpoint folder. Returns
        the ids of the runs. Nothing else about the runs is touched."""
        self.remove_stale_temporaries()
        stale = [r for r in self.list_runs(status="running") if self.liveness(r) == "gone"]
        if not stale:  # nothing to write: also works on a read-only store
            return []
        with self.session() as s, s.begin():
            for r in stale:
                row = s.get(Run, r.id)
                if row is not None and row.status == "running":
                    row.status = "failed"
                    row.finished_at = _now()
                    row.error = (f"StaleRun: process {r.pid} on {r.host} ended without finishing the run "
                                 "(killed, out of memory or power loss); marked failed by `ssbench runs --fail-stale`")
        return [r.id for r in stale]

    def children(self, run_id: int, kind: str | None = None) -> list[Run]:
        return self.list_runs(kind=kind, parent_id=run_id)

    # pandas loaders (the report's only way in)
    def _frame(self, stmt: Select) -> pd.DataFrame:
        with self.engine.connect() as conn:
            result = conn.execute(stmt)
            keys = list(result.keys())
            rows = [tuple(r) for r in result]
        return pd.DataFrame.from_records(rows, columns=keys)

    def frame_runs(self, **filters: Any) -> pd.DataFrame:
        """One row per run (all columns of `runs`). Filters: any run column name = value, plus tag."""
        tag = filters.pop("tag", None)
        df = self._frame(_apply_run_filters(select(*Run.__table__.columns), **filters).order_by(Run.id))
        if tag is not None:
            df = df[df["tags"].map(lambda t: _has_tag(t, tag))].reset_index(drop=True)
        return df

    def _joined(self, child: Any, columns: Sequence[Any], filters: dict[str, Any]) -> pd.DataFrame:
        tag = filters.pop("tag", None)
        run_cols = [Run.kind, Run.status, Run.rule, Run.model, Run.dataset, Run.seed, Run.task, Run.recipe,
                    Run.tags, Run.parent_id]
        stmt = select(*columns, *run_cols).join(Run, Run.id == child.run_id)
        stmt = _apply_run_filters(stmt, **filters).order_by(child.id)
        df = self._frame(stmt)
        if tag is not None:
            df = df[df["tags"].map(lambda t: _has_tag(t, tag))].reset_index(drop=True)
        return df

    def frame_metrics(self, **filters: Any) -> pd.DataFrame:
        """Per-epoch metrics (long form) with the run's kind/status/rule/model/dataset/seed/task/recipe/tags."""
        return self._joined(Metric, [Metric.run_id, Metric.epoch, Metric.split, Metric.name, Metric.value, Metric.seconds], filters)

    def frame_alignment(self, **filters: Any) -> pd.DataFrame:
        return self._joined(Alignment, [Alignment.run_id, Alignment.epoch, Alignment.layer, Alignment.angle_deg,
                                        Alignment.norm_ratio, Alignment.grad_angle_deg], filters)

    def frame_evaluations(self, **filters: Any) -> pd.DataFrame:
        return self._joined(Evaluation, [Evaluation.run_id, Evaluation.metric, Evaluation.value, Evaluation.split,
                                         Evaluation.params], filters)

    def frame_sanity(self, **filters: Any) -> pd.DataFrame:
        return self._joined(SanityCheckRow, [SanityCheckRow.run_id, SanityCheckRow.name, SanityCheckRow.passed,
                                             SanityCheckRow.value, SanityCheckRow.detail, SanityCheckRow.attack,
                                             SanityCheckRow.mode], filters)

    def frame_sweeps(self, **filters: Any) -> pd.DataFrame:
        """Sweep points joined to their attack run and its parent (the attacked model run).

        Columns: the point's (run_id = attack run, sweep, attack, mode, epsilon, n, robust, metric, seconds,
        params, correct); attack_status, attack_seed, attack_recipe, attack_tags; target_id and the
        target's kind, rule, model, dataset, seed, task, recipe, tags (falling back to the attack run's
        own values when it has no parent). Filters apply to the target's values (status: the attack run's).
        """
        atk = aliased(Run, name="atk")
        tgt = aliased(Run, name="tgt")
        P = SweepPointRow
        cols = [
            P.run_id, P.sweep, P.attack, P.mode, P.epsilon, P.n, P.robust, P.metric, P.seconds, P.params, P.correct,
            atk.status.label("attack_status"), atk.seed.label("attack_seed"), atk.recipe.label("attack_recipe"),
            atk.tags.label("attack_tags"), atk.parent_id.label("target_id"), tgt.kind.label("target_kind"),
            tgt.tags.label("target_tags"),
        ]
        for name in ("rule", "model", "dataset", "seed", "task", "recipe"):
            cols.append(func.coalesce(getattr(tgt, name), getattr(atk, name)).label(name))
        stmt = select(*cols).join(atk, atk.id == P.run_id).outerjoin(tgt, tgt.id == atk.parent_id).order_by(P.id)
        tag = filters.pop("tag", None)
        status = filters.pop("status", None)
        if status is not None:
            stmt = stmt.where(atk.status == status)
        for key, value in filters.items():
            if value is not None:
                stmt = stmt.where(func.coalesce(getattr(tgt, key), getattr(atk, key)) == value)
        df = self._frame(stmt)
        df["tags"] = [t if t is not None else a for t, a in zip(df["target_tags"], df["attack_tags"])] if len(df) else []
        df = df.drop(columns=["target_tags"])
        if tag is not None:
            keep = [_has_tag(t, tag) or _has_tag(a, tag) for t, a in zip(df["tags"], df["attack_tags"])]
            df = df[keep].reset_index(drop=True)
        return df


def open_store(url: str | None = None, artifacts: str | Path | None = None) -> Store:
    """Open (and migrate to head) the results store at `url`, SSBENCH_DB, or
    sqlite:///<SSBENCH_HOME or ./ssbench-results>/results.db.

    `Store.artifacts` (checkpoints live in `<artifacts>/checkpoints/<run_id>/`) is `artifacts`, else
    SSBENCH_ARTIFACTS, else the SQLite file's folder, else SSBENCH_HOME, else ./ssbench-results."""
    url = resolve_url(url)
    engine = make_engine(url)
    migrate(engine)
    root = _artifacts.artifact_root(artifacts, sqlite_file(url), default_home())
    return Store(engine, root, url)
