"""What model commands return: plain, JSON-ready records (no ORM objects leak out)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.store.models import Model


class ModelInfo(BaseModel):
    """One registered model as users see it."""

    id: str
    project: str
    name: str
    uri: str
    tags: list[str]
    published: bool
    task_id: str | None
    task_name: str | None
    """The producing task as `project/name`, None when no task is recorded."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: dt.datetime

    @property
    def label(self) -> str:
        """`project/name` — how messages name a model."""
        return f"{self.project}/{self.name}"

    @classmethod
    def of(cls, row: Model, task_name: str | None = None) -> ModelInfo:
        return cls(
            id=row.id,
            project=row.project.path,
            name=row.name,
            uri=row.uri,
            tags=sorted(row.tags),  # in insertion order until reloaded
            published=row.published,
            task_id=row.task_id,
            task_name=task_name,
            metadata=dict(row.meta or {}),
            created_at=row.created_at,
        )
