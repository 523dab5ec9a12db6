"""The event log's names and its one INSERT, importable without SQLAlchemy.

`orchestrator.store.events` (the ORM side) takes its constants from here; commands that write
through the bare driver (`orchestrator.store.lean.writer`) record their events with
`record_event` below, in the transaction of their change, as the ORM side does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from orchestrator.store import lean

EVENT_LOCK_ID = 0x6576_656E  # "even"
WROTE_EVENTS = "retrain.wrote_events"
"""Session flag: this transaction wrote events, so its commit notifies listeners."""

DATASET_VERSION_CREATED = "dataset.version.created"
DATASET_VERSION_FINALIZED = "dataset.version.finalized"
DATASET_VERSION_TAGGED = "dataset.version.tagged"
DATASET_VERSION_UNTAGGED = "dataset.version.untagged"
DATASET_VERSION_PUBLISHED = "dataset.version.published"
DATASET_VERSION_DELETED = "dataset.version.deleted"

TASK_CREATED = "task.created"
TASK_QUEUED = "task.queued"
TASK_STARTED = "task.started"
TASK_COMPLETED = "task.completed"
TASK_FAILED = "task.failed"
TASK_ABORTED = "task.aborted"

MODEL_REGISTERED = "model.registered"
MODEL_TAGGED = "model.tagged"
MODEL_PUBLISHED = "model.published"

SCHEDULE_FIRED = "schedule.fired"

LOCK_SQL = "SELECT pg_advisory_xact_lock(%s)"
"""PostgreSQL: event-writing transactions commit in sequence order (see `events`)."""

INSERT_SQL = (
    "INSERT INTO events (kind, entity_id, project, name, tags, payload, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def record_event(
    conn: Any,
    kind: str,
    *,
    entity_id: str,
    project: str,
    name: str,
    tags: Sequence[str] = (),
    payload: dict[str, Any] | None = None,
) -> None:
    """Add an event in the open transaction of a bare driver connection `conn`; the caller
    announces it after the commit."""
    if not lean.is_sqlite(conn):
        lean.execute(conn, LOCK_SQL, [EVENT_LOCK_ID])
    lean.execute(
        conn,
        INSERT_SQL,
        [
            kind,
            entity_id,
            project,
            name,
            json.dumps(sorted(tags)),
            json.dumps(payload or {}),
            lean.stamp(conn, lean.utcnow()),
        ],
    )
