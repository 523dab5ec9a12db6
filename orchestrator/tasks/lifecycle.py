"""The task state machine: loading a task to change it, allowed transitions, and the one path
every status change takes (status, time stamp and event in the caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from orchestrator.errors import Conflict, NotFound, UserError
from orchestrator.store import Store, rows
from orchestrator.store import events as ev
from orchestrator.store.models import Task, utcnow
from orchestrator.tasks.series import has_series, store_series, summaries
from orchestrator.tasks.states import EVENT_FIELDS, FINISHED, TRANSITIONS
from orchestrator.tasks.views import TaskInfo

EVENT_OF_STATUS = {
    "queued": ev.TASK_QUEUED,
    "running": ev.TASK_STARTED,
    "completed": ev.TASK_COMPLETED,
    "failed": ev.TASK_FAILED,
    "aborted": ev.TASK_ABORTED,
}


def load(session: Session, task_id: str, *, for_update: bool = False) -> Task:
    """The task row by id (locked for update when asked), or `NotFound`."""
    query = select(Task).where(Task.id == task_id).options(selectinload(Task.tag_rows))
    if for_update:
        query = rows.for_update(session, query, of=Task)
    row = session.scalars(query).first()
    if row is None:
        raise NotFound("task", task_id, "list tasks with: retrain task list")
    return row


def check_transition(row: Task, new: str) -> None:
    if row.kind == "template":
        raise Conflict(
            f"task {row.id} is a template ({row.project.path}/{row.name} revision "
            f"{row.revision}); templates are not queued or aborted themselves: "
            f"run it with: retrain task run {row.id}"
        )
    if new not in TRANSITIONS[row.status]:
        raise Conflict(
            f"task {row.id} is {row.status}; it cannot become {new}"
            + ("; clone it to run it again" if row.status in FINISHED else "")
        )


def set_status(
    session: Session,
    row: Task,
    status: str,
    *,
    flush: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The one path for every status change: check it is allowed, change status, stamp the
    time, and write the event in the same transaction (without `flush`, at the next flush:
    the scheduler writes a batch of runs at once)."""
    check_transition(row, status)
    now = utcnow()
    row.status = status
    if status == "queued":
        row.queued_at = now
    elif status == "running":
        row.started_at = now
    elif status in FINISHED:
        row.finished_at = now
    if flush:
        session.flush()
    record_event(session, EVENT_OF_STATUS[status], TaskInfo.of(row), flush=flush, extra=extra)


def record_event(
    session: Session,
    kind: str,
    info: TaskInfo,
    *,
    flush: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """A task event in the caller's transaction, with the fields triggers filter on (and
    `extra`'s non-empty ones: a finished run's series summaries)."""
    fields = {name: getattr(info, name) for name in EVENT_FIELDS}
    fields.update({k: v for k, v in (extra or {}).items() if v})
    ev.record_for(session, kind, info, fields, flush=flush)


def start(store: Store, task_id: str, worker: str) -> TaskInfo:
    """A worker began the task (applied from the worker's report)."""
    with store.session() as session:
        row = load(session, task_id, for_update=True)
        check_transition(row, "running")
        row.worker = worker
        set_status(session, row, "running")
        return TaskInfo.of(row)


def finish(
    store: Store,
    task_id: str,
    status: str,
    *,
    exit_code: int | None = None,
    error: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    artifacts: Sequence[Mapping[str, Any]] = (),
    duration_s: float | None = None,
    series: Mapping[str, Mapping[str, Any]] | None = None,
    logged_params: Mapping[str, Any] | None = None,
) -> TaskInfo:
    """The task ended: completed, failed or aborted, with what the worker reported. The
    event carries the metrics and each series' last, min and max, so task triggers can
    test them; the series are stored in the same transaction."""
    if status not in FINISHED:
        raise UserError(f"{status!r} is not a final status ({', '.join(FINISHED)})")
    with store.session() as session:
        row = load(session, task_id, for_update=True)
        check_transition(row, status)
        row.exit_code = exit_code
        row.error = error
        row.metrics = dict(metrics or {})
        if environment:
            row.environment = dict(environment)
        row.artifacts = [dict(a) for a in artifacts]
        row.duration_s = duration_s
        row.held = False
        if logged_params:
            row.logged_params = dict(logged_params)
        store_series(session, task_id, series or {})
        set_status(session, row, status, extra={"series": summaries(series or {})})
        return TaskInfo.of(row)


def keep_final_facts(
    store: Store,
    task_id: str,
    status: str,
    *,
    exit_code: int | None = None,
    environment: Mapping[str, Any] | None = None,
    artifacts: Sequence[Mapping[str, Any]] = (),
    duration_s: float | None = None,
    series: Mapping[str, Mapping[str, Any]] | None = None,
    logged_params: Mapping[str, Any] | None = None,
) -> bool:
    """A worker's final report for a task that had already ended (aborted by a user while it
    ran, or settled as lost): record what the run reported where the store has nothing yet:
    how long it ran, its environment, its artifacts (the stored log among them), and its exit
    code when it reports the same ending. The status, its reason and its time stay as the
    store decided them. Returns whether anything changed; a report applied again changes
    nothing."""
    with store.session() as session:
        row = load(session, task_id, for_update=True)
        if row.status not in FINISHED:
            raise Conflict(f"task {task_id} is {row.status}; it has not ended")
        changed = False
        if row.duration_s is None and duration_s is not None:
            row.duration_s, changed = duration_s, True
        if not row.environment and environment:
            row.environment, changed = dict(environment), True
        if not row.artifacts and artifacts:
            row.artifacts, changed = [dict(a) for a in artifacts], True
        if row.exit_code is None and exit_code is not None and status == row.status:
            row.exit_code, changed = exit_code, True
        if not row.logged_params and logged_params:
            row.logged_params, changed = dict(logged_params), True
        if series and not has_series(session, task_id):
            store_series(session, task_id, series)
            changed = True
        return changed


def abort_in(session: Session, row: Task, reason: str) -> TaskInfo:
    """Abort inside the caller's transaction; the caller cancels the job after commit."""
    check_transition(row, "aborted")
    row.error = reason
    row.held = False
    set_status(session, row, "aborted")
    return TaskInfo.of(row)
