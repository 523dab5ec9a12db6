"""Lineage both ways: what caused a run, what it used, what it produced, and the reverse.

A run records the event that caused it (`trigger_event_seq`) and what that event was about
(`trigger_entity_kind`, `trigger_entity_id`: a dataset version, task or model id); the dataset
versions it took as inputs are rows of `task_inputs` (kept equal to `resolved_inputs` by the
store model); the models it registered name it in `models.task_id`. These functions read
those links for `dataset show`, `model show`, `task show` and the SDK: each is a handful of
indexed queries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, NamedTuple

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.datasets import records
from orchestrator.datasets.records import RUN_LIMIT as RUN_LIMIT
from orchestrator.errors import NotFound
from orchestrator.store import Store
from orchestrator.store.models import Event, Model, Project, Task
from orchestrator.tasks.overrides import cause_columns as cause_columns


class TriggerCause(NamedTuple):
    """Why a trigger made a run: which trigger, which event, and what the event was about."""

    name: str
    event_seq: int
    entity_kind: str | None = None
    """dataset | task | model | schedule (the event's source)."""
    entity_id: str | None = None


# -- what the queries return ---------------------------------------------------------------


class EntityRef(BaseModel):
    kind: str
    id: str


class RunRef(BaseModel):
    """A run as lineage lists it."""

    id: str
    project: str
    name: str
    status: str
    template: str | None
    """The task it was cloned from."""
    trigger: str | None
    trigger_entity: EntityRef | None
    inputs: list[str] = Field(default_factory=list)
    """In `dataset show`: the names of the inputs that took the version."""
    created_at: dt.datetime

    @classmethod
    def of(cls, row: Task, inputs: Iterable[str] = ()) -> RunRef:
        return cls(
            id=row.id,
            project=row.project.path,
            name=row.name,
            status=row.status,
            template=row.parent_id,
            trigger=row.trigger_name,
            trigger_entity=entity_of(row),
            inputs=sorted(inputs),
            created_at=row.created_at,
        )


class ModelRef(BaseModel):
    id: str
    project: str
    name: str
    uri: str
    task_id: str | None
    created_at: dt.datetime

    @classmethod
    def of(cls, row: Model) -> ModelRef:
        return cls(
            id=row.id,
            project=row.project.path,
            name=row.name,
            uri=row.uri,
            task_id=row.task_id,
            created_at=row.created_at,
        )


class EventRef(BaseModel):
    seq: int
    kind: str
    entity: EntityRef
    project: str
    name: str
    version: str | None
    time: dt.datetime

    @classmethod
    def of(cls, row: Event) -> EventRef:
        return cls(
            seq=row.seq,
            kind=row.kind,
            entity=EntityRef(kind=row.kind.split(".", 1)[0], id=row.entity_id),
            project=row.project,
            name=row.name,
            version=(row.payload or {}).get("version"),
            time=row.created_at,
        )

    @property
    def label(self) -> str:
        from orchestrator.tasks.records import event_label

        return event_label(self.model_dump())


class VersionUsage(BaseModel):
    """`dataset show`: the runs that used a version and the models they registered."""

    runs: list[RunRef]
    models: list[ModelRef]


class ModelLineage(BaseModel):
    """`model show`: the run that registered the model, the task that run was cloned from,
    and the dataset versions it was trained on (as the run resolved them)."""

    run: RunRef | None
    template: RunRef | None
    inputs: dict[str, Any]


class RunLineage(BaseModel):
    """`task show`: the event that made the run, the events it absorbed, its models."""

    cause: EventRef | None
    """The event that made the run (for a coalesced run, the newest it absorbed)."""
    absorbed_events: list[EventRef]
    models: list[ModelRef]


def entity_of(row: Task) -> EntityRef | None:
    if not row.trigger_entity_id:
        return None
    return EntityRef(kind=row.trigger_entity_kind or "", id=row.trigger_entity_id)


# -- queries -------------------------------------------------------------------------------


def version_usage(store: Store, version_id: str, *, limit: int = RUN_LIMIT) -> VersionUsage:
    """Runs that took the version as an input or were fired by an event about it, newest
    first, and the models those runs registered. Unknown version: `NotFound`."""
    with store.reader() as session:
        driver = session.connection().connection.driver_connection
        return VersionUsage(**records.usage(driver, version_id, limit=limit))


def model_lineage(store: Store, model_id: str) -> ModelLineage:
    """(`tasks/records.model_show`, the queries `model show` runs without SQLAlchemy too.)"""
    from orchestrator.tasks import records as task_records

    with store.reader() as session:
        driver = session.connection().connection.driver_connection
        shown = task_records.model_show(driver, model_id)
    return ModelLineage(run=shown["run"], template=shown["template"], inputs=shown["inputs"])


def run_lineage(store: Store, task_id: str) -> RunLineage:
    """(`tasks/records.lineage`, the queries `task show` runs without SQLAlchemy too.)"""
    from orchestrator.tasks import records as task_records

    with store.reader() as session:
        driver = session.connection().connection.driver_connection
        info = task_records.task(driver, task_id)
        if info is None:
            raise NotFound("task", task_id, "list tasks with: retrain task list")
        return RunLineage(**task_records.lineage(driver, info))


def _models_of(session: Session, task_ids: list[str]) -> list[Model]:
    if not task_ids:
        return []
    return list(
        session.scalars(
            select(Model)
            .join(Project)
            .where(Model.task_id.in_(task_ids))
            .order_by(Model.created_at.desc(), Model.id)
        )
    )
