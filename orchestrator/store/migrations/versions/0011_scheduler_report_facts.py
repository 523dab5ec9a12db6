"""the scheduler's facts about reports, kept in the store: whether it checks signatures, how
many it refused and the last reason

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 11:40:00.000000

`retrain status` read these from Redis (a key the scheduler set, the dead-letter stream's
length), which anyone with Redis access (on a server without ACLs) could overwrite or delete
to hide "reports unsigned" or the refused reports.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, in place on SQLite too (no batch copy of the table).
    op.add_column("scheduler_state", sa.Column("reports_signed", sa.Boolean(), nullable=True))
    op.add_column("scheduler_state", sa.Column("reports_refused", sa.BigInteger(), nullable=True))
    op.add_column(
        "scheduler_state", sa.Column("last_refused_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("scheduler_state", sa.Column("last_refused_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_state", schema=None) as batch_op:
        batch_op.drop_column("last_refused_reason")
        batch_op.drop_column("last_refused_at")
        batch_op.drop_column("reports_refused")
        batch_op.drop_column("reports_signed")
