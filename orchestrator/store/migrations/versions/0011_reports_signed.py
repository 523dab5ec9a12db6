"""whether the leading scheduler checks report signatures, kept in the store

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 11:40:00.000000

`retrain status` used to read this from a Redis key that the scheduler set, which anyone with
Redis access (on a server without ACLs) could overwrite to hide "reports unsigned".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, in place on SQLite too (no batch copy of the table).
    op.add_column("scheduler_state", sa.Column("reports_signed", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_state", schema=None) as batch_op:
        batch_op.drop_column("reports_signed")
