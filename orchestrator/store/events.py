"""The event log: what changed, in commit order, for the scheduler to read past its cursor.

Writers call `record_event` inside the transaction that makes the change, so an event exists
exactly when its change does. On PostgreSQL a sequence hands out numbers at insert time, not at
commit, so a reader at cursor N could see N+2 commit before N+1 and then skip N+1 forever. An
advisory transaction lock taken just before the insert makes event-writing transactions commit
in sequence order; it is held only from the insert to the commit. SQLite has one writer at a
time already.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import select, text
from sqlalchemy.orm import Session

# The names live in eventlog, importable without SQLAlchemy.
from orchestrator.store.eventlog import (
    DATASET_VERSION_CREATED,
    DATASET_VERSION_DELETED,
    DATASET_VERSION_FINALIZED,
    DATASET_VERSION_PUBLISHED,
    DATASET_VERSION_TAGGED,
    DATASET_VERSION_UNTAGGED,
    EVENT_LOCK_ID,
    MODEL_PUBLISHED,
    MODEL_REGISTERED,
    MODEL_TAGGED,
    SCHEDULE_FIRED,
    TASK_ABORTED,
    TASK_COMPLETED,
    TASK_CREATED,
    TASK_FAILED,
    TASK_QUEUED,
    TASK_STARTED,
    WROTE_EVENTS,
)
from orchestrator.store.models import Event

__all__ = [  # with the names from eventlog, which this module re-exports
    "DATASET_VERSION_CREATED",
    "DATASET_VERSION_DELETED",
    "DATASET_VERSION_FINALIZED",
    "DATASET_VERSION_PUBLISHED",
    "DATASET_VERSION_TAGGED",
    "DATASET_VERSION_UNTAGGED",
    "EVENT_LOCK_ID",
    "MODEL_PUBLISHED",
    "MODEL_REGISTERED",
    "MODEL_TAGGED",
    "SCHEDULE_FIRED",
    "TASK_ABORTED",
    "TASK_COMPLETED",
    "TASK_CREATED",
    "TASK_FAILED",
    "TASK_QUEUED",
    "TASK_STARTED",
    "WROTE_EVENTS",
    "Entity",
    "last_sequence",
    "read_events",
    "record_event",
    "record_for",
]


def record_event(
    session: Session,
    kind: str,
    *,
    entity_id: str,
    project: str,
    name: str,
    tags: Sequence[str] = (),
    payload: dict[str, Any] | None = None,
    flush: bool = True,
) -> Event:
    """Add an event to the current transaction and return it; with `flush` (the default) it
    is written now and has its sequence number. Several events added with `flush=False` go
    to the database together at the next flush, in the order they were added."""
    if session.get_bind().dialect.name == "postgresql" and not _holds_event_lock(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": EVENT_LOCK_ID})
    event = Event(
        kind=kind,
        entity_id=entity_id,
        project=project,
        name=name,
        tags=sorted(tags),
        payload=payload or {},
    )
    session.add(event)
    session.info[WROTE_EVENTS] = True
    if flush:
        session.flush()
    return event


class Entity(Protocol):
    """What an event is about: a dataset version, a task, a model."""

    @property
    def id(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def tags(self) -> list[str]: ...


def record_for(
    session: Session, kind: str, entity: Entity, payload: dict[str, Any], *, flush: bool = True
) -> Event:
    """`record_event` for an entity: its id, project, name and current tags."""
    return record_event(
        session,
        kind,
        entity_id=entity.id,
        project=entity.project,
        name=entity.name,
        tags=entity.tags,
        payload=payload,
        flush=flush,
    )


def _holds_event_lock(session: Session) -> bool:
    """Whether this transaction took the event lock already (it is held until commit)."""
    transaction = session.get_transaction()
    if transaction is None:
        return False
    marker = session.info.get("retrain.event_lock")
    if marker is transaction:
        return True
    session.info["retrain.event_lock"] = transaction
    return False


def read_events(session: Session, after: int, limit: int = 1000) -> list[Event]:
    """Events with `seq > after`, oldest first: a range scan of the primary key."""
    query = select(Event).where(Event.seq > after).order_by(Event.seq).limit(limit)
    return list(session.scalars(query))


def last_sequence(session: Session) -> int:
    """The newest event's sequence number, 0 when the log is empty."""
    newest = session.scalar(select(Event.seq).order_by(Event.seq.desc()).limit(1))
    return int(newest or 0)
