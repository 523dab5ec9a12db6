"""Queueing in the store: a draft becomes `queued` with its commit and inputs frozen, or a
template is cloned and queued in one step (`task run`, a trigger's firing). Everything here
runs inside the caller's transaction; the job goes to Redis after commit (`dispatch.push`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchestrator.errors import NotFound, UserError
from orchestrator.store import events as ev
from orchestrator.store.models import Task, TaskTag
from orchestrator.tasks.cloning import CloneOptions, new_row
from orchestrator.tasks.inputs import resolve_inputs
from orchestrator.tasks.jobs import commit_for as commit_for
from orchestrator.tasks.lifecycle import check_transition, record_event, set_status
from orchestrator.tasks.overrides import cause_columns
from orchestrator.tasks.spec import Priority, check_queue
from orchestrator.tasks.views import TaskInfo, payload


def queue_in(
    session: Session,
    row: Task,
    commit: str,
    *,
    queue: str | None = None,
    priority: Priority | None = None,
) -> tuple[TaskInfo, dict[str, Any]]:
    """Queue `row` inside the caller's transaction; returns the job to push after commit."""
    check_transition(row, "queued")
    row.resolved_inputs = resolve_inputs(_driver(session), row.inputs or {}, row.parameters or {})
    row.spec = {**row.spec, "commit": commit}
    if queue:
        try:
            row.queue = check_queue(queue)
        except ValueError as exc:
            raise UserError(f"--queue: {exc}") from None
    if priority:
        row.priority = priority
    set_status(session, row, "queued")
    return TaskInfo.of(row), payload(row)


def run_in(
    session: Session,
    template: Task,
    options: CloneOptions,
    *,
    commit: str,
    priority: Priority | None = None,
    held: bool = False,
) -> tuple[TaskInfo, dict[str, Any]]:
    """Clone and queue inside the caller's transaction (the scheduler's, with its ledger row);
    returns the job for `push` once the transaction has committed. The clone is created as a
    draft and queued through the same transition as any run. Nothing is flushed here: many
    runs in one transaction reach the database in one batch. If the run cannot start (a
    `RetrainError`), nothing of it stays in the session."""
    # No autoflush: a run refused halfway (an input still a draft) must not be written.
    with session.no_autoflush:
        row = new_row(session, template, options)
        try:
            resolved = resolve_inputs(_driver(session), row.inputs or {}, row.parameters or {})
        except Exception:
            session.expunge(row)
            raise
    row.spec = {**row.spec, "commit": commit}
    row.priority = priority or "normal"
    row.held = held
    record_event(session, ev.TASK_CREATED, TaskInfo.of(row), flush=False)
    row.resolved_inputs = resolved
    set_status(session, row, "queued", flush=False)
    return TaskInfo.of(row), payload(row)


def repoint_in(session: Session, row: Task, options: CloneOptions, *, event_seq: int) -> None:
    """Re-point a waiting run at a newer event (`on_busy: coalesce`): every field a trigger
    renders (parameters, inputs and their resolved versions, tags) is rendered again from the
    run's template with `options`, exactly as a new run for this event would have it; the
    earlier events stay listed. Raises, changing nothing, if the newer event's run could not
    start."""
    template = session.get(Task, row.parent_id) if row.parent_id else None
    if template is None:
        raise NotFound("template", row.parent_id or "?", f"task {row.id} has no template")
    with session.no_autoflush:
        fresh = new_row(session, template, options)
        parameters, inputs, tags = fresh.parameters, fresh.inputs, set(fresh.tags)
        session.expunge(fresh)  # only its rendered fields are wanted
        resolved = resolve_inputs(_driver(session), inputs or {}, parameters or {})
    row.parameters = parameters
    row.inputs = inputs
    row.resolved_inputs = resolved
    row.tag_rows = [
        *(t for t in row.tag_rows if t.tag in tags),
        *(TaskTag(tag=t) for t in sorted(tags - set(row.tags))),
    ]
    previous = [row.trigger_event_seq] if row.trigger_event_seq is not None else []
    row.coalesced_events = [*(row.coalesced_events or []), *previous]
    row.trigger_event_seq = event_seq
    if options.trigger:
        cause = cause_columns(options.trigger)
        row.trigger_entity_kind = cause["trigger_entity_kind"]
        row.trigger_entity_id = cause["trigger_entity_id"]


def _driver(session: Session) -> Any:
    """The session's bare driver connection (the dataset version queries are `records`')."""
    return session.connection().connection.driver_connection
