"""Feeding Redis from the store: pushing a committed job, taking a run back, cancelling an
aborted one's job, and reconcile (the store is the truth; Redis is repaired from it)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from orchestrator.errors import Conflict, ServiceUnavailable
from orchestrator.queue.adapter import QueueAdapter
from orchestrator.store import Store
from orchestrator.store.models import Task
from orchestrator.tasks.lifecycle import abort_in, load, set_status
from orchestrator.tasks.views import ReconcileReport, TaskInfo, payload


def push(queues: QueueAdapter, info: TaskInfo, job: dict[str, Any]) -> bool:
    """Send a committed queued task's job to Redis; False when Redis is unreachable (the
    task stays queued in the store and reconcile sends it later)."""
    try:
        queues.enqueue(
            info.id,
            job,
            queue=info.queue,
            priority=info.priority,
            timeout_s=int(info.spec["timeout_s"]),
        )
    except ServiceUnavailable:
        return False
    return True


def requeue(
    store: Store, queues: QueueAdapter, task_id: str, reason: str, *, attempt: bool
) -> TaskInfo:
    """Put a running task back on its queue: its worker stopped before it finished (a stop
    with `--abort-on-stop`), or was lost and the task has retries left (`attempt` counts it
    against them).

    The old job is deleted while the row is locked and before the change commits: if that
    fails (Redis down), nothing changed and the caller tries again later; a stale job left
    behind a `queued` row would count as present to reconcile and the task would never run.
    The fresh job is pushed after commit (reconcile pushes it if Redis went away in
    between)."""
    with store.session() as session:
        row = load(session, task_id, for_update=True)
        if row.status != "running":
            raise Conflict(f"task {task_id} is {row.status}; only a running task goes back")
        queues.remove(task_id)
        if attempt:
            row.attempt = (row.attempt or 0) + 1
        row.error = reason
        row.worker = None
        row.started_at = None
        set_status(session, row, "queued")
        info, job = TaskInfo.of(row), payload(row)
    push(queues, info, job)
    return info


def abort(store: Store, queues: Callable[[], QueueAdapter], task_id: str, reason: str) -> TaskInfo:
    """Mark a task aborted, then stop its job in Redis if it had one (`queues` connects only
    then: an abort commits whether or not Redis answers)."""
    with store.session() as session:
        row = load(session, task_id, for_update=True)
        had_job = row.status in ("queued", "running") and not row.held
        info = abort_in(session, row, reason)
    if had_job:
        # If Redis is unreachable now, reconcile removes the waiting job later.
        with contextlib.suppress(ServiceUnavailable):
            queues().cancel(task_id)
    return info


STALE_FINISHED_JOB_S = 120.0
"""How long after its job ended a still-queued task's finished job is taken for one whose
reports were lost: longer than a scheduler's ingest round, so reports in flight land first."""


def reconcile(
    store: Store, queues: QueueAdapter, *, now: dt.datetime | None = None
) -> ReconcileReport:
    """Make Redis agree with the store: every queued task has its job (enqueued once,
    atomically, even with several reconcilers), and the 1,000 most recently aborted tasks
    keep no job waiting.

    A queued task's job that RQ says *finished* ran without its reports reaching the store
    (they were erased before the scheduler read them): once every report is read and the job
    ended `STALE_FINISHED_JOB_S` before `now`, it is replaced by a new one, else the task
    would stay queued forever. So is a job RQ says *failed*: `run_task` never fails for the
    task's own failure, so a worker refused it (a payload signed with another secret, or
    unsigned) or died before it started, and nothing of it ran."""
    report = ReconcileReport()
    with store.reader() as session:
        queued = list(
            session.scalars(
                select(Task)
                .where(Task.status == "queued", Task.held.is_(False))
                .options(selectinload(Task.tag_rows))
            )
        )
        aborted = list(
            session.scalars(
                select(Task.id)
                .where(Task.status == "aborted")
                .order_by(Task.finished_at.desc())
                .limit(1000)
            )
        )
    report.checked = len(queued)
    present = queues.existing([t.id for t in queued])
    now = now or dt.datetime.now(dt.timezone.utc)
    stale = now - dt.timedelta(seconds=STALE_FINISHED_JOB_S)
    ended = queues.finished_before(sorted(present), stale)
    if ended and queues.reports_all_read():
        for task_id in sorted(ended):
            queues.remove(task_id)
            present.discard(task_id)
            report.replaced.append(task_id)
    for row in queued:
        if row.id in present:
            continue
        info = TaskInfo.of(row)
        if queues.enqueue(
            row.id,
            payload(row),
            queue=row.queue,
            priority=row.priority,
            timeout_s=int(row.spec["timeout_s"]),
        ):
            report.enqueued.append(info.id)
    for task_id in sorted(queues.existing(aborted)):
        job = queues.job(task_id)
        if job is not None and job.get_status() == "queued":
            queues.remove(task_id)
            report.removed.append(task_id)
    return report
