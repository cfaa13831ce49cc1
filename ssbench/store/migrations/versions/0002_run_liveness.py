"""Run liveness: the pid that owns a 'running' run and the time it last wrote a row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

A SIGKILL, an OOM kill or a power loss runs no Python code, so such a run stays 'running'. With
host + pid the store can tell, on the same host, that its process is gone; `heartbeat_at` tells
how long a run on another host has been silent.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:  # batch: SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("pid")
