"""firings that cannot start wait as `error` decisions: an index to find them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 04:45:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trigger_firings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_trigger_firings_decision", ["decision", "event_seq"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("trigger_firings", schema=None) as batch_op:
        batch_op.drop_index("ix_trigger_firings_decision")
