"""What dataset commands return: plain, JSON-ready records (no ORM objects leak out)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.store.models import DatasetVersion


class VersionInfo(BaseModel):
    """One dataset version as users see it."""

    id: str
    project: str
    name: str
    version: str
    status: str
    published: bool
    tags: list[str]
    parents: list[str]
    description: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    file_count: int
    total_size: int
    created_at: dt.datetime
    finalized_at: dt.datetime | None
    manifest_sha256: str | None

    @property
    def label(self) -> str:
        """`project/name 1.0.1` — how messages name a version."""
        return f"{self.project}/{self.name} {self.version}"

    @classmethod
    def of(cls, row: DatasetVersion) -> VersionInfo:
        return cls(
            id=row.id,
            project=row.dataset.project.path,
            name=row.dataset.name,
            version=row.version,
            status=row.status,
            published=row.published,
            tags=row.tags,
            parents=row.parent_ids,
            description=row.description,
            metadata=dict(row.meta or {}),
            file_count=row.file_count,
            total_size=row.total_size,
            created_at=row.created_at,
            finalized_at=row.finalized_at,
            # A draft may name the manifest it is about to store; only a final one has it.
            manifest_sha256=row.manifest_sha256 if row.status == "final" else None,
        )


class ChangeSummary(BaseModel):
    """What an `add`, `remove` or `sync` did to a draft."""

    version_id: str
    added: list[str] = Field(default_factory=list)
    modified: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    unchanged: int = 0
    file_count: int = 0
    total_size: int = 0


class FinalizeResult(BaseModel):
    version: VersionInfo
    uploaded_blobs: int
    uploaded_bytes: int
    reused_blobs: int


class LineageEntry(BaseModel):
    id: str
    label: str
    depth: int
    parents: list[str]


class VersionDetail(BaseModel):
    """`dataset show`: the version, its ancestry, and how it differs from its parents."""

    version: VersionInfo
    lineage: list[LineageEntry]
    added: list[str]
    modified: list[str]
    removed: list[str]
    added_bytes: int
