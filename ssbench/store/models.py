"""SQLAlchemy 2 typed ORM of the results store. Schema changes go through a new alembic revision
in `ssbench/store/migrations/versions/` (tests check that the migrations and these models agree).
See docs/schema.md for what each column means."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ssbench.specs import RUN_STATUSES

# Stable constraint names: alembic can alter them later on every backend (SQLite batch mode included).
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _run_fk() -> ForeignKey:
    return ForeignKey("runs.id", ondelete="CASCADE")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # the same text as migration 0001's constraint, built from the one list of statuses
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in RUN_STATUSES)})", name="status"),
        Index("ix_runs_kind_config_hash", "kind", "config_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    recipe: Mapped[str | None] = mapped_column(String(200), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(Integer)
    rule: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(200))
    dataset: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[str | None] = mapped_column(String(32))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    device: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)  # process that owns a 'running' run (revision 0002)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # last row written
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def __repr__(self) -> str:
        return f"Run(id={self.id}, kind={self.kind!r}, status={self.status!r}, rule={self.rule!r})"


class Metric(Base):
    """Per-epoch training curves, long form: one row per (epoch, split, name)."""

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)  # NULL = NaN / undefined
    seconds: Mapped[float | None] = mapped_column(Float)


class Alignment(Base):
    __tablename__ = "alignment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    layer: Mapped[str] = mapped_column(String(255))
    angle_deg: Mapped[float | None] = mapped_column(Float)
    norm_ratio: Mapped[float | None] = mapped_column(Float)
    grad_angle_deg: Mapped[float | None] = mapped_column(Float)


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    split: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SweepPointRow(Base):
    __tablename__ = "sweep_points"
    __table_args__ = (
        CheckConstraint("n >= 0", name="n_nonnegative"),
        CheckConstraint("robust >= 0", name="robust_nonnegative"),
        CheckConstraint("correct IS NULL OR length(correct) = n", name="correct_length"),
        Index("ix_sweep_points_run_id_attack_mode", "run_id", "attack", "mode"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    sweep: Mapped[int] = mapped_column(Integer)  # 0, 1, ... per run: points added by one add_sweep call
    attack: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mode: Mapped[str] = mapped_column(String(16))
    epsilon: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    robust: Mapped[float] = mapped_column(Float)
    metric: Mapped[str] = mapped_column(String(32))
    seconds: Mapped[float] = mapped_column(Float)
    correct: Mapped[str | None] = mapped_column(Text)


class SanityCheckRow(Base):
    __tablename__ = "sanity_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    name: Mapped[str] = mapped_column(String(64))
    passed: Mapped[bool | None] = mapped_column(Boolean(create_constraint=False))
    value: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(Text)
    attack: Mapped[str | None] = mapped_column(String(64))
    mode: Mapped[str | None] = mapped_column(String(16))


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "tag"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    tag: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int | None] = mapped_column(Integer)
    metric: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


CLAIM_STATUSES = ("running", "finished", "failed")


class Claim(Base):
    """One row per job of any recipe ever planned on this store, keyed by (kind, config_hash): the
    claim a worker holds while it runs the job. Exactly-once comes from this row, not from the
    executor: taking it is an INSERT (unique key) or a compare-and-swap UPDATE on `token`."""

    __tablename__ = "claims"
    __table_args__ = (
        UniqueConstraint("kind", "config_hash"),
        CheckConstraint("status IN ('running', 'finished', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    config_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    label: Mapped[str] = mapped_column(String(255))  # "finetune frsf lenet seed 0": for humans
    recipe: Mapped[str | None] = mapped_column(String(200))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))  # the finished run
    token: Mapped[str] = mapped_column(String(32))  # changes at every take-over: the CAS key
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
