"""metric series of runs, and the parameters a run's code logged

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 08:00:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "metric_series",
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.Column("step", sa.Float(), nullable=True),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("points", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_metric_series_task_id_tasks")
        ),
        sa.PrimaryKeyConstraint("task_id", "name", name=op.f("pk_metric_series")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("logged_params", _json(), nullable=False, server_default="{}")
        )


def downgrade() -> None:
    # In place on both databases (SQLite 3.35+): a batch copy of `tasks` would drop the table
    # that other rows refer to, which SQLite's enforced foreign keys refuse.
    op.execute("ALTER TABLE tasks DROP COLUMN logged_params")
    op.drop_table("metric_series")
