"""Small helpers every service uses on rows: projects made on first use, row locks."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from orchestrator.store.models import Project, utcnow

S = TypeVar("S", bound="Select[Any]")


def project(session: Session, path: str) -> Project:
    """The project with this path, created in the current transaction if it is new."""
    row = session.scalars(select(Project).where(Project.path == path)).first()
    if row is None:
        row = Project(path=path, created_at=utcnow())
        session.add(row)
    return row


def for_update(session: Session, query: S, of: Any = None) -> S:
    """Lock the selected rows until commit on PostgreSQL. SQLite needs no row locks: its
    write transactions start with BEGIN IMMEDIATE and so run one at a time."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(of=of) if of is not None else query.with_for_update()
    return query
