"""templates and runs: a task is a template revision or a run cloned from one

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 08:00:00.000000

Before this revision a "template" was any draft or completed task, so `project/name` could
resolve to a manual run. From now on `kind` says which a task is. The stored tasks are sorted
out the way they were made:

- a draft that was never queued and was not cloned from anything was registered
  (`task create` / `task capture`): a template, numbered `revision` 1, 2, ... per
  project/name in the order registered;
- everything else is a run; `template_id` names the template revision it descends from
  (following `parent_id` through runs cloned from runs), NULL for a task registered and
  queued directly, which had no template.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TASKS = sa.table(
    "tasks",
    sa.column("id", sa.String),
    sa.column("project_id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("status", sa.String),
    sa.column("parent_id", sa.String),
    sa.column("queued_at", sa.DateTime),
    sa.column("created_at", sa.DateTime),
    sa.column("kind", sa.String),
    sa.column("template_id", sa.String),
    sa.column("revision", sa.Integer),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # In place: a batch copy of `tasks` drops the table that other rows (clones, their
        # parent_id) refer to, which SQLite's enforced foreign keys refuse. ADD COLUMN may
        # carry a REFERENCES clause when its default is NULL.
        op.execute("ALTER TABLE tasks ADD COLUMN kind VARCHAR(8) DEFAULT 'run' NOT NULL")
        op.execute("ALTER TABLE tasks ADD COLUMN template_id VARCHAR(32) REFERENCES tasks (id)")
        op.execute("ALTER TABLE tasks ADD COLUMN revision INTEGER")
    else:
        op.add_column(
            "tasks",
            sa.Column("kind", sa.String(length=8), nullable=False, server_default="run"),
        )
        op.add_column("tasks", sa.Column("template_id", sa.String(length=32), nullable=True))
        op.add_column("tasks", sa.Column("revision", sa.Integer(), nullable=True))
        op.create_foreign_key(
            "fk_tasks_template_id_tasks", "tasks", "tasks", ["template_id"], ["id"]
        )
    op.create_index("ix_tasks_template_id", "tasks", ["template_id", "created_at"], unique=False)
    op.create_index(
        "ix_tasks_kind_name", "tasks", ["kind", "project_id", "name", "created_at"], unique=False
    )
    _sort_existing_tasks()
    op.create_index(
        "ux_tasks_template_revision", "tasks", ["project_id", "name", "revision"], unique=True
    )


def _sort_existing_tasks() -> None:
    conn = op.get_bind()
    found = conn.execute(
        sa.select(
            TASKS.c.id,
            TASKS.c.project_id,
            TASKS.c.name,
            TASKS.c.status,
            TASKS.c.parent_id,
            TASKS.c.queued_at,
        ).order_by(TASKS.c.created_at, TASKS.c.id)
    ).all()
    parent = {row.id: row.parent_id for row in found}
    templates: dict[str, int] = {}
    numbered: dict[tuple[int, str], int] = {}
    for row in found:
        if row.status == "draft" and row.queued_at is None and row.parent_id is None:
            key = (row.project_id, row.name)
            numbered[key] = numbered.get(key, 0) + 1
            templates[row.id] = numbered[key]
    if templates:
        conn.execute(
            TASKS.update()
            .where(TASKS.c.id == sa.bindparam("tid"))
            .values(kind="template", revision=sa.bindparam("rev")),
            [{"tid": tid, "rev": rev} for tid, rev in templates.items()],
        )
    runs = [
        {"tid": row.id, "tpl": root}
        for row in found
        if row.id not in templates and (root := _template_of(row.id, parent, templates))
    ]
    if runs:
        conn.execute(
            TASKS.update()
            .where(TASKS.c.id == sa.bindparam("tid"))
            .values(template_id=sa.bindparam("tpl")),
            runs,
        )


def _template_of(
    task_id: str, parent: Mapping[str, str | None], templates: Mapping[str, int]
) -> str | None:
    """The nearest template up the chain of parents (a chain never loops: a parent is
    always older than its clone, but the walk is bounded all the same)."""
    current = parent.get(task_id)
    for _ in range(len(parent)):
        if current is None or current in templates:
            return current
        current = parent.get(current)
    return None


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ux_tasks_template_revision")
        batch_op.drop_index("ix_tasks_kind_name")
        batch_op.drop_index(batch_op.f("ix_tasks_template_id"))
        batch_op.drop_constraint(batch_op.f("fk_tasks_template_id_tasks"), type_="foreignkey")
        batch_op.drop_column("revision")
        batch_op.drop_column("template_id")
        batch_op.drop_column("kind")
