"""Read-side queries over dataset versions; each takes an open session."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from orchestrator.datasets.manifest import FileEntry, Manifest
from orchestrator.errors import NotFound
from orchestrator.store import rows
from orchestrator.store.models import (
    Dataset,
    DatasetVersion,
    Project,
    VersionFile,
    VersionTag,
)

S = TypeVar("S", bound="Select[Any]")

_VERSION_LOADS = (selectinload(DatasetVersion.tag_rows), selectinload(DatasetVersion.parent_links))


def load_version(session: Session, version_id: str, *, for_update: bool = False) -> DatasetVersion:
    """The version with this id, or `NotFound` with a hint to search."""
    query = select(DatasetVersion).where(DatasetVersion.id == version_id).options(*_VERSION_LOADS)
    if for_update:
        query = rows.for_update(session, query, of=DatasetVersion)
    row = session.scalars(query).first()
    if row is None:
        raise NotFound("dataset version", version_id, "list versions with: retrain dataset search")
    return row


def load_manifest(session: Session, version_id: str) -> Manifest:
    rows = session.execute(
        select(VersionFile.path, VersionFile.size, VersionFile.sha256).where(
            VersionFile.version_id == version_id
        )
    )
    return {path: FileEntry(path, size, sha) for path, size, sha in rows}


def find_dataset(session: Session, project: str, name: str) -> Dataset | None:
    return session.scalars(
        select(Dataset).join(Project).where(Project.path == project, Dataset.name == name)
    ).first()


def newest_final(
    session: Session, project: str, name: str, tags: Iterable[str] = ()
) -> DatasetVersion:
    """The most recently finalized version of `project/name` carrying every tag in `tags`."""
    dataset = find_dataset(session, project, name)
    row = None
    if dataset is not None:
        query = (
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.status == "final")
            .options(*_VERSION_LOADS)
            .order_by(
                DatasetVersion.finalized_at.desc(),
                DatasetVersion.major.desc(),
                DatasetVersion.minor.desc(),
                DatasetVersion.patch.desc(),
            )
            .limit(1)
        )
        row = session.scalars(_with_all_tags(query, tags)).first()
    if row is None:
        tag_hint = f" tagged {', '.join(sorted(tags))}" if tags else ""
        raise NotFound("final version of dataset", f"{project}/{name}{tag_hint}")
    return row


def _with_all_tags(query: S, tags: Iterable[str]) -> S:
    tag_list = sorted(set(tags))
    if not tag_list:
        return query
    having_all = (
        select(VersionTag.version_id)
        .where(VersionTag.tag.in_(tag_list))
        .group_by(VersionTag.version_id)
        .having(func.count() == len(tag_list))
    )
    return query.where(DatasetVersion.id.in_(having_all))
