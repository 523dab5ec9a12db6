"""The templates a triggers file names, looked up in the store for load-time checks.

`triggers check` of 10,000 triggers naming 1,000 templates must not cost 1,000 round trips:
references written `project/name` (nearly all of them) are found in one query, by the same
rule as `TaskService.resolve_template` (the newest revision of that template); ids and
`project/name@tag` go through `resolve_template` itself. `store_runs` finds the references
that are a run's id, which a trigger may not clone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import TYPE_CHECKING

from sqlalchemy import select, tuple_

from orchestrator.errors import RetrainError
from orchestrator.store.models import Project, Task
from orchestrator.tasks.inputs import ID
from orchestrator.tasks.resolution import TEMPLATE, NotATemplate, template_of
from orchestrator.triggers.config import RunLookup, TemplateLookup, TemplateShape

if TYPE_CHECKING:
    from orchestrator.tasks.service import TaskService

CHUNK = 500
"""(project, name) pairs per query: far below every database's limit on parameters."""


def store_templates(tasks: TaskService) -> TemplateLookup:
    """A `TemplateLookup` over the store: references -> the shapes of those that exist."""

    def lookup(refs: Collection[str]) -> dict[str, TemplateShape]:
        found: dict[str, TemplateShape] = {}
        by_name: dict[tuple[str, str], list[str]] = {}
        with tasks.store.reader() as session:
            for ref in refs:
                project, _, name = ref.rpartition("/")
                if "@" in ref or not project or not name:
                    with contextlib.suppress(RetrainError):  # absent: not in `found`
                        found[ref] = _shape(tasks.resolve_template(session, ref))
                else:
                    by_name.setdefault((project, name), []).append(ref)
            pairs = list(by_name)
            for start in range(0, len(pairs), CHUNK):
                query = (
                    select(Task)
                    .join(Project)
                    .where(
                        tuple_(Project.path, Task.name).in_(pairs[start : start + CHUNK]),
                        Task.kind == TEMPLATE,
                    )
                    .order_by(Task.revision.desc())
                )
                for row in session.scalars(query):
                    for ref in by_name.get((row.project.path, row.name), ()):
                        found.setdefault(ref, _shape(row))  # the newest comes first
        return found

    return lookup


def store_runs(tasks: TaskService) -> RunLookup:
    """A `RunLookup` over the store: of the references that are ids, those naming a run,
    each with the error that says how to name its template."""

    def lookup(refs: Collection[str]) -> dict[str, str]:
        ids = sorted(ref for ref in refs if ID.match(ref))
        if not ids:
            return {}
        found: dict[str, str] = {}
        with tasks.store.reader() as session:
            for start in range(0, len(ids), CHUNK):
                query = select(Task).where(Task.id.in_(ids[start : start + CHUNK]))
                for row in session.scalars(query.where(Task.kind != TEMPLATE)):
                    found[row.id] = str(NotATemplate(row, template_of(session, row)))
        return found

    return lookup


def _shape(row: Task) -> TemplateShape:
    return TemplateShape(
        row.project.path, row.name, dict(row.parameters or {}), dict(row.inputs or {})
    )
