"""Template references: what `project/name`, `project/name@tag` and an id name."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.errors import NotFound, UserError
from orchestrator.store.models import Project, Task, TaskTag
from orchestrator.tasks.inputs import ID
from orchestrator.tasks.states import TEMPLATE_STATUSES


def resolve_template(session: Session, ref: str) -> Task:
    """An id, `project/name` (the newest template of that name: draft or completed), or
    `project/name@tag`."""
    if ID.match(ref):
        row = session.get(Task, ref)
        if row is None:
            raise NotFound("task", ref)
        return row
    path, _, tag = ref.partition("@")
    project, _, name = path.rpartition("/")
    if not project or not name:
        raise UserError(f"template {ref!r}: expected an id, project/name or project/name@tag")
    query = (
        select(Task)
        .join(Project)
        .where(Project.path == project, Task.name == name, Task.status.in_(TEMPLATE_STATUSES))
        .order_by(Task.created_at.desc())
        .limit(1)
    )
    if tag:
        query = query.where(Task.id.in_(select(TaskTag.task_id).where(TaskTag.tag == tag)))
    row = session.scalars(query).first()
    if row is None:
        raise NotFound(
            "template",
            ref,
            "templates are draft or completed tasks; list them with: retrain task list",
        )
    return row
