"""Initial schema: runs, metrics, alignment, evaluations, sweep_points, sanity_checks, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-05-01

Written by hand (not imported from the ORM) so this revision stays what it was when models change.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _run_id(table: str) -> sa.Column:
    return sa.Column(
        "run_id", sa.Integer(),
        sa.ForeignKey("runs.id", ondelete="CASCADE", name=f"fk_{table}_run_id_runs"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("recipe", sa.String(200), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("rule", sa.String(32), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("dataset", sa.String(200), nullable=True),
        sa.Column("task", sa.String(32), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["parent_id"], ["runs.id"], ondelete="SET NULL", name="fk_runs_parent_id_runs"),
        sa.CheckConstraint("status IN ('running', 'finished', 'failed')", name="ck_runs_status"),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_recipe", "runs", ["recipe"])
    op.create_index("ix_runs_parent_id", "runs", ["parent_id"])
    op.create_index("ix_runs_kind_config_hash", "runs", ["kind", "config_hash"])

    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        _run_id("metrics"),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_metrics"),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])

    op.create_table(
        "alignment",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        _run_id("alignment"),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("layer", sa.String(255), nullable=False),
        sa.Column("angle_deg", sa.Float(), nullable=True),
        sa.Column("norm_ratio", sa.Float(), nullable=True),
        sa.Column("grad_angle_deg", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alignment"),
    )
    op.create_index("ix_alignment_run_id", "alignment", ["run_id"])

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        _run_id("evaluations"),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
    )
    op.create_index("ix_evaluations_run_id", "evaluations", ["run_id"])

    op.create_table(
        "sweep_points",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        _run_id("sweep_points"),
        sa.Column("sweep", sa.Integer(), nullable=False),
        sa.Column("attack", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("robust", sa.Float(), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("correct", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sweep_points"),
        sa.CheckConstraint("n >= 0", name="ck_sweep_points_n_nonnegative"),
        sa.CheckConstraint("robust >= 0", name="ck_sweep_points_robust_nonnegative"),
        sa.CheckConstraint("correct IS NULL OR length(correct) = n", name="ck_sweep_points_correct_length"),
    )
    op.create_index("ix_sweep_points_run_id", "sweep_points", ["run_id"])
    op.create_index("ix_sweep_points_run_id_attack_mode", "sweep_points", ["run_id", "attack", "mode"])

    op.create_table(
        "sanity_checks",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        _run_id("sanity_checks"),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean(create_constraint=False), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("attack", sa.String(64), nullable=True),
        sa.Column("mode", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sanity_checks"),
    )
    op.create_index("ix_sanity_checks_run_id", "sanity_checks", ["run_id"])

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        _run_id("checkpoints"),
        sa.Column("tag", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("metric", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.UniqueConstraint("run_id", "tag", name="uq_checkpoints_run_id_tag"),
    )
    op.create_index("ix_checkpoints_run_id", "checkpoints", ["run_id"])


def downgrade() -> None:
    for table in ("checkpoints", "sanity_checks", "sweep_points", "evaluations", "alignment", "metrics", "runs"):
        op.drop_table(table)
