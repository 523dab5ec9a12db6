"""run lineage: the entity a run's triggering event was about, its inputs as rows, and an
index for listing tasks newest first

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 07:45:00.000000

Existing runs are filled in: the entity from the event their `trigger_event_seq` names, the
input rows from their `resolved_inputs`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trigger_entity_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("trigger_entity_id", sa.String(length=128), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_tasks_trigger_entity_id"), ["trigger_entity_id"], unique=False
        )
        # `task list` (now carrying parameters and inputs) pages newest first: no full sort.
        batch_op.create_index("ix_tasks_created_at", ["created_at"], unique=False)
    op.create_table(
        "task_inputs",
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_inputs_task_id_tasks")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_task_inputs_version_id_dataset_versions"),
        ),
        sa.PrimaryKeyConstraint("task_id", "name", name=op.f("pk_task_inputs")),
    )
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_inputs_version_id"), ["version_id"], unique=False)
    _backfill()


def _backfill() -> None:
    conn = op.get_bind()
    events = sa.table(
        "events",
        sa.column("seq", sa.BigInteger),
        sa.column("kind", sa.String),
        sa.column("entity_id", sa.String),
    )
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.String),
        sa.column("trigger_event_seq", sa.BigInteger),
        sa.column("trigger_entity_kind", sa.String),
        sa.column("trigger_entity_id", sa.String),
        sa.column("resolved_inputs", JSON),
    )
    versions = sa.table("dataset_versions", sa.column("id", sa.String))
    links = sa.table(
        "task_inputs",
        sa.column("task_id", sa.String),
        sa.column("name", sa.String),
        sa.column("version_id", sa.String),
    )
    caused = conn.execute(
        sa.select(tasks.c.id, events.c.kind, events.c.entity_id).join(
            events, events.c.seq == tasks.c.trigger_event_seq
        )
    ).all()
    for task_id, kind, entity_id in caused:
        conn.execute(
            tasks.update()
            .where(tasks.c.id == task_id)
            .values(trigger_entity_kind=str(kind).split(".", 1)[0], trigger_entity_id=entity_id)
        )
    known = {row[0] for row in conn.execute(sa.select(versions.c.id))}
    rows: list[dict[str, Any]] = []
    for task_id, resolved in conn.execute(sa.select(tasks.c.id, tasks.c.resolved_inputs)):
        for name, entry in (resolved or {}).items():
            version_id = entry.get("version_id") if isinstance(entry, dict) else None
            if version_id in known:
                rows.append({"task_id": task_id, "name": name, "version_id": version_id})
    if rows:
        conn.execute(links.insert(), rows)


def downgrade() -> None:
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_inputs_version_id"))
    op.drop_table("task_inputs")
    op.drop_index(op.f("ix_tasks_trigger_entity_id"), table_name="tasks")
    op.drop_index("ix_tasks_created_at", table_name="tasks")
    # In place on both databases (SQLite 3.35+): a batch copy of `tasks` would drop the table
    # that other rows refer to, which SQLite's enforced foreign keys refuse.
    op.execute("ALTER TABLE tasks DROP COLUMN trigger_entity_id")
    op.execute("ALTER TABLE tasks DROP COLUMN trigger_entity_kind")
