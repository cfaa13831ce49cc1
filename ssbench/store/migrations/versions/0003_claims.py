"""Job claims: exactly-once execution of recipe jobs across drivers and workers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

One row per (kind, config_hash). A worker inserts it (or takes over a failed / stale one by a
compare-and-swap on `token`) before running the job, heart-beats it while running and marks it
finished with the run id. Runs made outside recipes (plain `ssbench finetune`) take no claim.

Also re-keys `runs.config_hash` as `Store.job_hash`: a field naming another run (source, target,
surrogate) is hashed as that run's own hash, not its row id, so one experiment has one hash in
every store. The hash function is frozen here, as it was on the day of this revision.
"""
from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


REF_FIELDS = ("source", "target", "surrogate")


def _rehash_runs() -> None:
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("config", sa.JSON),
                    sa.column("config_hash", sa.String))
    conn = op.get_bind()
    rows = conn.execute(sa.select(runs.c.id, runs.c.config, runs.c.config_hash).order_by(runs.c.id)).all()
    hashes = {r.id: r.config_hash for r in rows}
    for r in rows:  # ids ascend, so a run's source is re-keyed before the run itself
        cfg = dict(r.config if isinstance(r.config, dict) else json.loads(r.config))
        refs = {f: int(v.strip().lstrip("#")) for f in REF_FIELDS
                if isinstance(v := cfg.get(f), str) and v.strip().lstrip("#").isdigit()}
        refs = {f: i for f, i in refs.items() if i in hashes}
        if not refs:
            continue
        cfg.update({f: f"run:{hashes[i]}" for f, i in refs.items()})
        text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        hashes[r.id] = hashlib.sha256(text.encode()).hexdigest()
        conn.execute(sa.update(runs).where(runs.c.id == r.id).values(config_hash=hashes[r.id]))


def upgrade() -> None:
    _rehash_runs()
    op.create_table(
        "claims",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("recipe", sa.String(length=200), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'finished', 'failed')", name="ck_claims_status"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_claims_run_id_runs", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_claims"),
        sa.UniqueConstraint("kind", "config_hash", name="uq_claims_kind_config_hash"),
    )
    op.create_index("ix_claims_status", "claims", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_claims_status", table_name="claims")
    op.drop_table("claims")
