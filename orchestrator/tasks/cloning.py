"""Cloning into a run as an ORM row: the columns come from `overrides.clone_values` (typed
overrides, `${...}` rendering, inputs and tags), which `task run`'s bare-driver path uses too."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchestrator.store.models import Task, TaskTag
from orchestrator.tasks.overrides import CloneOptions as CloneOptions
from orchestrator.tasks.overrides import clone_values


def new_row(session: Session, template: Task, options: CloneOptions) -> Task:
    """The run cloned from `template` (a template revision or a run) as a draft row, added
    to the session but not flushed."""
    driver = session.connection().connection.driver_connection
    values, tags = clone_values(driver, source_of(template), options)
    row = Task(project=template.project, **values)
    row.tag_rows = [TaskTag(tag=t) for t in tags]
    session.add(row)
    return row


def source_of(row: Task) -> dict[str, Any]:
    """A task row as `clone_values` reads its source (`overrides.SOURCE_FIELDS`)."""
    return {
        "id": row.id,
        "kind": row.kind,
        "template": row.template_id,
        "name": row.name,
        "type": row.type,
        "comment": row.comment,
        "queue": row.queue,
        "spec": row.spec,
        "parameters": row.parameters,
        "inputs": row.inputs,
    }
