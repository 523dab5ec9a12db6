"""What a task reference names.

- `project/name`: the newest revision of that template; `project/name@tag`: the newest
  revision carrying the tag. Only templates: a run is never reached by name, so what a
  trigger clones is what was registered, however many manual runs happened in between.
- an id: that task. `resolve_template` takes only a template's id (what a trigger may
  clone); `resolve_source` takes a run's id too (`task run RUN_ID` re-runs it exactly).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.errors import NotFound, UserError
from orchestrator.store.models import Task
from orchestrator.tasks import records
from orchestrator.tasks.inputs import ID
from orchestrator.tasks.overrides import RUN as RUN
from orchestrator.tasks.overrides import TEMPLATE as TEMPLATE
from orchestrator.tasks.records import split_ref as split_ref


class NotATemplate(UserError):
    """A run's id where only a template may be named (a trigger's `template:`)."""

    def __init__(self, run: Task, template: Task | None) -> None:
        self.run_id = run.id
        label = f"{run.project.path}/{template.name if template else run.name}"
        if template is not None:
            how = (
                f"name the template: {label!r} (its newest revision) or {template.id} "
                f"(revision {template.revision}, the one this run came from)"
            )
        else:
            how = f"it has no template; register one (retrain task create) and name it {label!r}"
        super().__init__(f"{run.id} is a run of {label}, not a template; {how}")


def resolve_source(session: Session, ref: str) -> Task:
    """What `task run` and `task clone` copy: a template by reference, or any task by id."""
    if ID.match(ref):
        row = session.get(Task, ref)
        if row is None:
            raise NotFound("task", ref, "list tasks with: retrain task list")
        return row
    return resolve_template(session, ref)


def resolve_template(session: Session, ref: str) -> Task:
    """A template revision: by id, `project/name` (the newest revision) or
    `project/name@tag` (the newest revision carrying the tag)."""
    if ID.match(ref):
        row = session.get(Task, ref)
        if row is None:
            raise NotFound("template", ref, "list templates with: retrain task list --templates")
        if row.kind != TEMPLATE:
            raise NotATemplate(row, template_of(session, row))
        return row
    project, name, tag = split_ref(ref)
    session.flush()  # the query below runs on the session's connection, under the ORM
    driver = session.connection().connection.driver_connection
    found = records.template_id(driver, project, name, tag)
    row = session.get(Task, found) if found is not None else None
    if row is None:
        raise NotFound("template", ref, "list templates with: retrain task list --templates")
    return row


def template_of(session: Session, row: Task) -> Task | None:
    """A task's template revision: itself for a template, its `template_id` for a run."""
    if row.kind == TEMPLATE:
        return row
    return session.get(Task, row.template_id) if row.template_id else None


def next_revision(session: Session, project_id: int | None, name: str) -> int:
    """The revision number a new registration of project/name gets. Registrations of one
    name are serialized by the caller's lock on the project row (PostgreSQL) or by SQLite's
    one writer; the unique index on (project, name, revision) is the backstop."""
    if project_id is None:
        return 1
    newest = session.scalars(
        select(Task.revision)
        .where(Task.project_id == project_id, Task.name == name, Task.kind == TEMPLATE)
        .order_by(Task.revision.desc())
        .limit(1)
    ).first()
    return (newest or 0) + 1
