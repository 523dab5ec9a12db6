"""`TaskService`: the task operations behind the CLI, the scheduler and the Python API.

A facade: each operation lives in the module of its concept, and this class wires them to the
store, the git mirror and the queues.

| concept | module |
|---|---|
| registering a template (git and entry-point checks, pins) | `registration` |
| what `project/name`, `@tag` and ids resolve to (templates vs runs) | `resolution` |
| cloning with overrides, rendering `${...}` | `cloning` |
| inputs and placeholders: checked, resolved to versions | `inputs` |
| statuses, transitions and their events | `lifecycle` (rules in `states`) |
| queueing in the store (freeze commit and inputs) | `queueing` |
| pushing to Redis, taking back, reconcile | `dispatch` |
| `task list` | `listing` |

Order of work for every change: check everything that can fail for outside reasons (git,
requirements, dataset references) first; then one database transaction writes the task and its
event; only after the commit is Redis touched. A crash between the commit and the enqueue
leaves a `queued` task without a job, which `reconcile()` puts back exactly once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.errors import ServiceUnavailable, UserError
from orchestrator.git import Mirror
from orchestrator.queue.adapter import QueueAdapter
from orchestrator.store import Store
from orchestrator.store import events as ev
from orchestrator.store.models import Task
from orchestrator.tasks import dispatch, lifecycle, listing, queueing, registration
from orchestrator.tasks.cloning import CloneOptions, new_row
from orchestrator.tasks.lifecycle import EVENT_OF_STATUS, load, record_event
from orchestrator.tasks.resolution import resolve_source, resolve_template
from orchestrator.tasks.series import series_of
from orchestrator.tasks.spec import Priority, TaskDefinition
from orchestrator.tasks.states import TRANSITIONS
from orchestrator.tasks.views import ReconcileReport, TaskInfo

__all__ = ["EVENT_OF_STATUS", "CloneOptions", "TaskService"]


class TaskService:
    """Task operations behind the CLI, the scheduler and the Python API."""

    def __init__(
        self,
        store: Store,
        mirror: Mirror,
        queues: Callable[[], QueueAdapter],
    ) -> None:
        self.store = store
        self.mirror = mirror
        self._queues = queues
        self._adapter: QueueAdapter | None = None

    @property
    def queues(self) -> QueueAdapter:
        if self._adapter is None:
            self._adapter = self._queues()
        return self._adapter

    # -- registration (registration.py) -----------------------------------------------------

    def create(
        self, definition: TaskDefinition, *, base_dir: Path | None = None, diff: str | None = None
    ) -> TaskInfo:
        """Register a template after checking its code exists."""
        return registration.register(
            self.store, self.mirror, definition, base_dir=base_dir, diff=diff
        )

    def capture(self, directory: Path, definition: TaskDefinition) -> TaskInfo:
        """Register a template from a local checkout."""
        return registration.register_checkout(self.store, self.mirror, directory, definition)

    # -- references and clones (resolution.py, cloning.py) ---------------------------------

    def resolve_template(self, session: Session, ref: str) -> Task:
        return resolve_template(session, ref)

    def clone(self, ref: str, *, session: Session | None = None, **options: Any) -> TaskInfo:
        """A new draft copied from a template, with its parent recorded. See `CloneOptions`
        for the options; override values may use `${...}` anywhere in a string."""
        if session is None:
            with self.store.session() as own:
                return self.clone(ref, session=own, **options)
        row = new_row(session, resolve_source(session, ref), CloneOptions(**options))
        session.flush()
        info = TaskInfo.of(row)
        record_event(session, ev.TASK_CREATED, info)
        return info

    # -- queueing (queueing.py, then dispatch.py after commit) -----------------------------

    def enqueue(
        self, task_id: str, *, queue: str | None = None, priority: Priority | None = None
    ) -> tuple[TaskInfo, bool]:
        """Mark a draft queued (resolving its branch to a commit and its inputs to dataset
        versions), commit, then put its job on Redis. Returns the task and whether Redis got
        the job now; if Redis is down the task stays queued and `reconcile` enqueues it."""
        with self.store.reader() as session:
            row = load(session, task_id)
            lifecycle.check_transition(row, "queued")
            commit = self.commit_for(row.spec)
        with self.store.session() as session:
            row = load(session, task_id, for_update=True)
            info, job = queueing.queue_in(session, row, commit, queue=queue, priority=priority)
        return info, self.push(info, job)

    def commit_for(self, spec: Mapping[str, Any]) -> str:
        """The commit a task runs: its recorded one, or what its branch points at now."""
        return queueing.commit_for(self.mirror, spec)

    def queue_in(
        self,
        session: Session,
        row: Task,
        commit: str,
        *,
        queue: str | None = None,
        priority: Priority | None = None,
    ) -> tuple[TaskInfo, dict[str, Any]]:
        """Queue `row` inside the caller's transaction; returns the job to push after commit."""
        return queueing.queue_in(session, row, commit, queue=queue, priority=priority)

    def push(self, info: TaskInfo, job: dict[str, Any]) -> bool:
        """Send a committed queued task's job to Redis; False when Redis is unreachable."""
        try:
            queues = self.queues  # connecting may be what fails
        except ServiceUnavailable:
            return False
        return dispatch.push(queues, info, job)

    def run(
        self, ref: str, *, priority: Priority | None = None, **options: Any
    ) -> tuple[TaskInfo, bool]:
        """Clone a template revision (or re-run a run, by id) with overrides and queue the
        clone: `retrain task run`."""
        with self.store.session() as session:
            template = resolve_source(session, ref)
            commit = template.spec.get("commit") or self.mirror.cached_head(
                template.spec["repo"], template.spec.get("branch") or "HEAD"
            )
            if commit is not None:
                info, job = self.run_in(
                    session, ref, commit=commit, priority=priority, template=template, **options
                )
        if commit is None:
            # The branch must be asked of the repository: do that outside any transaction
            # (it may take a network round trip), then run with the answer.
            commit = self.commit_for(template.spec)
            with self.store.session() as session:
                template = resolve_source(session, ref)
                info, job = self.run_in(
                    session, ref, commit=commit, priority=priority, template=template, **options
                )
        return info, self.push(info, job)

    def run_in(
        self,
        session: Session,
        ref: str,
        *,
        commit: str,
        priority: Priority | None = None,
        template: Task | None = None,
        held: bool = False,
        **options: Any,
    ) -> tuple[TaskInfo, dict[str, Any]]:
        """Clone and queue inside the caller's transaction; see `queueing.run_in`. `ref` must
        name a template (a trigger's `template:`) unless the caller resolved `template`."""
        template = template or resolve_template(session, ref)
        return queueing.run_in(
            session, template, CloneOptions(**options), commit=commit, priority=priority, held=held
        )

    def run_many(
        self,
        ref: str,
        overrides: Sequence[Mapping[str, Any]],
        *,
        priority: Priority | None = None,
    ) -> list[tuple[TaskInfo, bool]]:
        """Many runs of one template in one transaction, then their jobs: what a burst of
        firings costs. Each item of `overrides` is one run's `params`."""
        with self.store.reader() as session:
            spec = resolve_source(session, ref).spec
        commit = self.commit_for(spec)
        with self.store.session() as session:
            template = resolve_source(session, ref)
            made = [
                self.run_in(
                    session, ref, commit=commit, priority=priority, template=template, params=params
                )
                for params in overrides
            ]
        return [(info, self.push(info, job)) for info, job in made]

    def repoint_in(self, session: Session, row: Task, *, event_seq: int, **options: Any) -> None:
        """Re-point a waiting run at a newer event; see `queueing.repoint_in`."""
        queueing.repoint_in(session, row, CloneOptions(**options), event_seq=event_seq)

    # -- the state machine (lifecycle.py) and Redis (dispatch.py) --------------------------

    def start(self, task_id: str, worker: str) -> TaskInfo:
        """A worker began the task (applied from the worker's report)."""
        return lifecycle.start(self.store, task_id, worker)

    def finish(self, task_id: str, status: str, **outcome: Any) -> TaskInfo:
        """The task ended; see `lifecycle.finish` for what `outcome` holds."""
        return lifecycle.finish(self.store, task_id, status, **outcome)

    def keep_final_facts(self, task_id: str, status: str, **facts: Any) -> bool:
        """A late final report for a task that had already ended; see `lifecycle`."""
        return lifecycle.keep_final_facts(self.store, task_id, status, **facts)

    def requeue(self, task_id: str, reason: str, *, attempt: bool) -> TaskInfo:
        """Put a running task back on its queue; see `dispatch.requeue`."""
        return dispatch.requeue(self.store, self.queues, task_id, reason, attempt=attempt)

    def abort_in(self, session: Session, row: Task, reason: str) -> TaskInfo:
        """Abort inside the caller's transaction; the caller cancels the job after commit."""
        return lifecycle.abort_in(session, row, reason)

    def abort(self, task_id: str, reason: str = "aborted by user") -> TaskInfo:
        """Mark a task aborted, then stop its job in Redis if it had one."""
        return dispatch.abort(self.store, lambda: self.queues, task_id, reason)

    def reconcile(self, now: dt.datetime | None = None) -> ReconcileReport:
        """Make Redis agree with the store; see `dispatch.reconcile`."""
        return dispatch.reconcile(self.store, self.queues, now=now)

    # -- reading ---------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskInfo:
        with self.store.reader() as session:
            return TaskInfo.of(load(session, task_id))

    def template(self, ref: str) -> TaskInfo:
        """The template revision `ref` names (a run's id is refused, saying so)."""
        with self.store.reader() as session:
            return TaskInfo.of(resolve_template(session, ref))

    def lookup(self, ref: str) -> TaskInfo:
        """Any task by id, or a template by reference: what `task show` shows."""
        from orchestrator.tasks import records

        with self.store.reader() as session:
            found = records.lookup(session.connection().connection.driver_connection, ref)
        del found["_coalesced"]
        return TaskInfo(**found)

    def series(self, task_id: str) -> dict[str, dict[str, Any]]:
        """The run's stored metric series (empty until its worker reported)."""
        with self.store.reader() as session:
            load(session, task_id)
            return series_of(session, task_id)

    def overview(self, template: TaskInfo, *, runs: int = 10) -> dict[str, Any]:
        """A template's revisions (newest first) and the latest runs of any of them."""
        with self.store.reader() as session:
            conn = session.connection().connection.driver_connection
            return listing.template_overview(conn, template.project, template.name, runs=runs)

    def list(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        kind: str = "run",
        dataset: str | None = None,
        parent: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Task summaries, newest first (the same query `task list` runs without SQLAlchemy):
        runs, or templates with `kind="template"`."""
        if status and status not in TRANSITIONS:
            raise UserError(f"--status: {status!r} is not one of {', '.join(TRANSITIONS)}")
        with self.store.reader() as session:
            conn = session.connection().connection.driver_connection
            return listing.list_tasks(
                conn,
                project=project,
                status=status,
                tag=tag,
                kind=kind,
                dataset=dataset,
                parent=parent,
                limit=limit,
            )
