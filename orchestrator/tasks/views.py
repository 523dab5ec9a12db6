"""What task commands return, and the job payload a worker receives."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.store.models import Task
from orchestrator.tasks import jobs
from orchestrator.tasks.jobs import PAYLOAD_VERSION as PAYLOAD_VERSION
from orchestrator.tasks.jobs import execution_id as execution_id


class TaskInfo(BaseModel):
    """One task as users see it."""

    id: str
    project: str
    name: str
    type: str
    status: str
    tags: list[str]
    comment: str
    kind: str = "run"
    """"template" (a registered revision) or "run" (a clone of one)."""
    revision: int | None = None
    """A template's revision number within its project/name."""
    template: str | None = None
    """A run's template revision (its id)."""
    parent: str | None
    trigger: str | None
    trigger_event: int | None
    trigger_entity: dict[str, str] | None = None
    """What the triggering event was about: {kind: dataset | task | model | schedule, id}."""
    queue: str
    priority: str
    created_at: dt.datetime
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    worker: str | None
    exit_code: int | None
    error: str | None
    metrics: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any]
    parameters: dict[str, Any]
    inputs: dict[str, Any]
    resolved_inputs: dict[str, Any]
    environment: dict[str, Any] = Field(default_factory=dict)
    artifacts: list[dict[str, Any]] = Field(default_factory=list)
    duration_s: float | None = None
    attempt: int = 0
    logged_params: dict[str, Any] = Field(default_factory=dict)
    """Parameters as the run's code logged them (`retrain_run.connect` defaults, MLflow)."""

    @property
    def label(self) -> str:
        return f"{self.project}/{self.name}"

    @classmethod
    def of(cls, row: Task) -> TaskInfo:
        return cls(
            id=row.id,
            project=row.project.path,
            name=row.name,
            type=row.type,
            status=row.status,
            tags=row.tags,
            comment=row.comment,
            kind=row.kind or "run",
            revision=row.revision,
            template=row.template_id,
            parent=row.parent_id,
            trigger=row.trigger_name,
            trigger_event=row.trigger_event_seq,
            trigger_entity=(
                {"kind": row.trigger_entity_kind or "", "id": row.trigger_entity_id}
                if row.trigger_entity_id
                else None
            ),
            queue=row.queue,
            priority=row.priority,
            created_at=row.created_at,
            queued_at=row.queued_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            worker=row.worker,
            exit_code=row.exit_code,
            error=row.error,
            metrics=dict(row.metrics or {}),
            spec=dict(row.spec),
            parameters=dict(row.parameters or {}),
            inputs=dict(row.inputs or {}),
            resolved_inputs=dict(row.resolved_inputs or {}),
            environment=dict(row.environment or {}),
            artifacts=list(row.artifacts or []),
            duration_s=row.duration_s,
            attempt=row.attempt or 0,
            logged_params=dict(row.logged_params or {}),
        )


def payload(row: Task) -> dict[str, Any]:
    """The job's only argument (`jobs.payload`), from the row's columns."""
    return jobs.payload(
        task_id=row.id,
        attempt=row.attempt,
        queued_at=row.queued_at,
        project=row.project.path,
        name=row.name,
        type=row.type,
        queue=row.queue,
        priority=row.priority,
        spec=row.spec,
        parameters=row.parameters,
        resolved_inputs=row.resolved_inputs,
    )


class ReconcileReport(BaseModel):
    """What `reconcile()` did: jobs put back for queued tasks, jobs removed for tasks that are
    no longer queued."""

    enqueued: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    replaced: list[str] = Field(default_factory=list)
    """Queued tasks whose finished job was deleted (its reports were lost) and enqueued again."""
    checked: int = 0
