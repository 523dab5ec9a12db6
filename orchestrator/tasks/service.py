"""Template tasks and runs: register, capture, clone with overrides, enqueue, abort, reconcile.

Order of work for every change: check everything that can fail for outside reasons (git,
requirements, dataset references) first; then one database transaction writes the task and its
event; only after the commit is Redis touched. A crash between the commit and the enqueue
leaves a `queued` task without a job, which `reconcile()` puts back exactly once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from orchestrator import templating
from orchestrator.datasets import queries as dataset_queries
from orchestrator.datasets.validate import check_name, check_project, check_tag
from orchestrator.errors import Conflict, NotFound, ServiceUnavailable, UserError
from orchestrator.git import Mirror, capture, normalize_repo
from orchestrator.queue.adapter import QueueAdapter
from orchestrator.store import Store, rows
from orchestrator.store import events as ev
from orchestrator.store.models import Project, Task, TaskTag, new_id, utcnow
from orchestrator.tasks import listing
from orchestrator.tasks import requirements as reqs
from orchestrator.tasks.params import apply_overrides
from orchestrator.tasks.spec import (
    EntryPoint,
    ExecutionSpec,
    Priority,
    TaskDefinition,
    check_queue,
)
from orchestrator.tasks.states import FINISHED, TEMPLATE_STATUSES, TRANSITIONS
from orchestrator.tasks.views import ReconcileReport, TaskInfo, payload

EVENT_OF_STATUS = {
    "queued": ev.TASK_QUEUED,
    "running": ev.TASK_STARTED,
    "completed": ev.TASK_COMPLETED,
    "failed": ev.TASK_FAILED,
    "aborted": ev.TASK_ABORTED,
}
STALE_FINISHED_JOB_S = 120.0
"""How long after its job ended a still-queued task's finished job is taken for one whose
reports were lost: longer than a scheduler's ingest round, so reports in flight land first."""

_ID = re.compile(r"^[0-9a-f]{32}$")
_PARAM_REF = re.compile(r"^\$\{\s*params\.([^}]+?)\s*\}$")


@dataclass(frozen=True)
class CloneOptions:
    """How a clone differs from its template."""

    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    """Overrides: raw strings from the CLI (typed like the template's values) or typed values;
    `${...}` placeholders allowed."""
    inputs: Mapping[str, str] = field(default_factory=dict)
    queue: str | None = None
    tags: Iterable[str] = ()
    allow_new_params: bool = False
    context: Mapping[str, Any] = field(default_factory=dict)
    """Variables for placeholders besides the task's own `params.*` (a trigger's `dataset.*`)."""
    trigger: tuple[str, int] | None = None
    """(trigger name, event sequence) when a trigger creates the clone."""


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

    # -- registration ----------------------------------------------------------------------

    def create(
        self, definition: TaskDefinition, *, base_dir: Path | None = None, diff: str | None = None
    ) -> TaskInfo:
        """Register a task (a template, normally) after checking its code exists."""
        base = base_dir or Path.cwd()
        project = check_project(definition.project)
        name = check_name(definition.name)
        tags = sorted({check_tag(t) for t in definition.tags})
        try:
            spec = ExecutionSpec(
                repo=normalize_repo(definition.repo, base),
                branch=definition.branch,
                commit=definition.commit,
                working_dir=definition.working_dir,
                entry=EntryPoint(script=definition.script, module=definition.module),
                args=definition.args,
                env=definition.env,
                env_not_secret=definition.env_not_secret,
                diff=diff,
                requirements=self._requirements(definition, base),
                python=definition.python,
                gpus=definition.gpus,
                timeout_s=int(definition.timeout),
                abort_grace_s=int(definition.abort_grace),
                retries=definition.retries,
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise UserError(_first_error(exc)) from None
        spec = self._check_code(spec)
        _check_placeholders(spec, definition.params, definition.inputs)
        with self.store.session() as session:
            _check_input_refs(session, definition.inputs, definition.params)
            row = Task(
                project=rows.project(session, project),
                name=name,
                type=definition.type,
                status="draft",
                comment=definition.comment,
                queue=definition.queue,
                priority="normal",
                created_at=utcnow(),
                spec=spec.model_dump(mode="json"),
                parameters=dict(definition.params),
                inputs=dict(definition.inputs),
                resolved_inputs={},
                metrics={},
            )
            row.tag_rows = [TaskTag(tag=t) for t in tags]
            session.add(row)
            session.flush()
            info = TaskInfo.of(row)
            _event(session, ev.TASK_CREATED, info)
        return info

    def capture(self, directory: Path, definition: TaskDefinition) -> TaskInfo:
        """Register a task from a local checkout: its remote (or path), HEAD, uncommitted
        changes, and its requirements file when none is named."""
        if not directory.is_dir():
            raise UserError(f"{directory} is not a folder")
        captured = capture(directory)
        if definition.requirements is None and (directory / "requirements.txt").exists():
            definition = definition.model_copy(
                update={"requirements": str((directory / "requirements.txt").absolute())}
            )
        definition = definition.model_copy(
            update={"repo": captured.repo, "commit": captured.commit, "branch": None}
        )
        return self.create(definition, base_dir=directory, diff=captured.diff)

    def _requirements(self, definition: TaskDefinition, base: Path) -> list[str]:
        value = definition.requirements
        if value is None:
            return []
        if isinstance(value, list):
            return reqs.parse_text("\n".join(value), "requirements")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if definition.resolve:
            return reqs.resolve(path, definition.python)
        return reqs.read_file(path)

    def _check_code(self, spec: ExecutionSpec) -> ExecutionSpec:
        """The branch or commit exists and the entry point is there at that commit. A given
        commit is recorded in full; a branch stays a branch until the task is queued."""
        mirror = self.mirror.ensure(spec.repo, spec.commit)
        ref = spec.commit or spec.branch or "HEAD"
        try:
            commit = self.mirror.resolve(mirror, ref)
        except UserError:
            what = "--commit" if spec.commit else "--branch" if spec.branch else "HEAD"
            raise UserError(f"{what}: {ref!r} does not exist in {spec.repo}") from None
        entry = _entry_paths(spec)
        if not any(self.mirror.has_path(mirror, commit, path) for path in entry):
            raise UserError(
                f"{spec.entry.describe()} is not in {spec.repo} at {commit[:12]} "
                f"(looked for {' or '.join(entry)})"
            )
        if spec.commit:
            return spec.model_copy(update={"commit": commit})
        return spec

    # -- templates and clones --------------------------------------------------------------

    def resolve_template(self, session: Session, ref: str) -> Task:
        """An id, `project/name` (the newest template of that name: draft or completed), or
        `project/name@tag`."""
        if _ID.match(ref):
            row = session.get(Task, ref)
            if row is None:
                raise NotFound("task", ref)
            return row
        path, _, tag = ref.partition("@")
        project, _, name = path.rpartition("/")
        if not project or not name:
            raise UserError(f"template {ref!r}: expected an id, project/name or project/name@tag")
        query = (
            select(Task)
            .join(Project)
            .where(Project.path == project, Task.name == name, Task.status.in_(TEMPLATE_STATUSES))
            .order_by(Task.created_at.desc())
            .limit(1)
        )
        if tag:
            query = query.where(Task.id.in_(select(TaskTag.task_id).where(TaskTag.tag == tag)))
        row = session.scalars(query).first()
        if row is None:
            raise NotFound(
                "template",
                ref,
                "templates are draft or completed tasks; list them with: retrain task list",
            )
        return row

    def clone(self, ref: str, *, session: Session | None = None, **options: Any) -> TaskInfo:
        """A new draft copied from a template, with its parent recorded. See `CloneOptions`
        for the options; override values may use `${...}` anywhere in a string."""
        if session is None:
            with self.store.session() as own:
                return self.clone(ref, session=own, **options)
        row = self._new_row(session, self.resolve_template(session, ref), CloneOptions(**options))
        session.flush()
        info = TaskInfo.of(row)
        _event(session, ev.TASK_CREATED, info)
        return info

    def _new_row(self, session: Session, template: Task, options: CloneOptions) -> Task:
        """The clone of `template` as a draft row, added to the session but not flushed."""
        # Overrides without placeholders apply first, so `${params.X}` in another override
        # sees the value X has in this run, not the template's.
        overrides = dict(options.params)
        templated = {k: v for k, v in overrides.items() if _has_placeholder(v)}
        allow_new = options.allow_new_params
        parameters = apply_overrides(
            template.parameters or {},
            {k: v for k, v in overrides.items() if k not in templated},
            allow_new=allow_new,
        )
        variables = {f"params.{k}": v for k, v in parameters.items()}
        variables.update(options.context)
        rendered = {
            key: templating.render_value(value, variables, where=f"--param {key}")
            for key, value in templated.items()
        }
        parameters = apply_overrides(parameters, rendered, allow_new=allow_new)
        merged_inputs = dict(template.inputs or {})
        for key, value in options.inputs.items():
            if key not in merged_inputs and not allow_new:
                raise UserError(f"--input {key}: the template has no such input")
            merged_inputs[key] = templating.render(value, variables, where=f"--input {key}")
        if options.params or options.inputs:
            _check_placeholders(
                ExecutionSpec.model_validate(template.spec), parameters, merged_inputs
            )
        _check_input_refs(session, merged_inputs, parameters)
        trigger = options.trigger
        row = Task(
            id=new_id(),
            project=template.project,
            name=check_name(options.name) if options.name else template.name,
            type=template.type,
            status="draft",
            comment=template.comment,
            parent_id=template.id,
            trigger_name=trigger[0] if trigger else None,
            trigger_event_seq=trigger[1] if trigger else None,
            queue=check_queue(options.queue) if options.queue else template.queue,
            priority="normal",
            created_at=utcnow(),
            spec=dict(template.spec),
            parameters=parameters,
            inputs=merged_inputs,
            resolved_inputs={},
            metrics={},
        )
        # Tags are rendered like the other fields: a trigger's `from-${dataset.version}`.
        rendered_tags = (templating.render(t, variables, where=f"--tag {t}") for t in options.tags)
        new_tags = sorted({*(template.tags), *(check_tag(t) for t in rendered_tags)})
        row.tag_rows = [TaskTag(tag=t) for t in new_tags]
        session.add(row)
        return row

    # -- queueing --------------------------------------------------------------------------

    def enqueue(
        self, task_id: str, *, queue: str | None = None, priority: Priority | None = None
    ) -> tuple[TaskInfo, bool]:
        """Mark a draft queued (resolving its branch to a commit and its inputs to dataset
        versions), commit, then put its job on Redis. Returns the task and whether Redis got
        the job now; if Redis is down the task stays queued and `reconcile` enqueues it."""
        with self.store.reader() as session:
            row = _load(session, task_id)
            _check_transition(row, "queued")
            commit = self.commit_for(row.spec)
        with self.store.session() as session:
            row = _load(session, task_id, for_update=True)
            info, job = self.queue_in(session, row, commit, queue=queue, priority=priority)
        return info, self.push(info, job)

    def commit_for(self, spec: Mapping[str, Any]) -> str:
        """The commit a task runs: its recorded one, or what its branch points at now."""
        if spec.get("commit"):
            return str(spec["commit"])
        ref = spec.get("branch") or "HEAD"
        commit = self.mirror.head_of(str(spec["repo"]), ref)
        if commit is None:
            raise UserError(f"branch {ref!r} no longer exists in {spec['repo']}")
        return commit

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
        _check_transition(row, "queued")
        row.resolved_inputs = _resolve_inputs(session, row.inputs or {}, row.parameters or {})
        row.spec = {**row.spec, "commit": commit}
        if queue:
            row.queue = check_queue(queue)
        if priority:
            row.priority = priority
        _set_status(session, row, "queued")
        return TaskInfo.of(row), payload(row)

    def push(self, info: TaskInfo, job: dict[str, Any]) -> bool:
        """Send a committed queued task's job to Redis; False when Redis is unreachable (the
        task stays queued in the store and reconcile sends it later)."""
        try:
            self.queues.enqueue(
                info.id,
                job,
                queue=info.queue,
                priority=info.priority,
                timeout_s=int(info.spec["timeout_s"]),
            )
        except ServiceUnavailable:
            return False
        return True

    def run(
        self, ref: str, *, priority: Priority | None = None, **options: Any
    ) -> tuple[TaskInfo, bool]:
        """Clone a template with overrides and queue the clone: `retrain task run`."""
        with self.store.session() as session:
            template = self.resolve_template(session, ref)
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
                info, job = self.run_in(session, ref, commit=commit, priority=priority, **options)
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
        """Clone and queue inside the caller's transaction (the scheduler's, with its ledger
        row); returns the job for `push` once the transaction has committed. The clone is
        created as a draft and queued through the same transition as any run. Nothing is
        flushed here: many runs in one transaction reach the database in one batch. If the
        run cannot start (a `RetrainError`), nothing of it stays in the session."""
        template = template or self.resolve_template(session, ref)
        # No autoflush: a run refused halfway (an input still a draft) must not be written.
        with session.no_autoflush:
            row = self._new_row(session, template, CloneOptions(**options))
            try:
                resolved = _resolve_inputs(session, row.inputs or {}, row.parameters or {})
            except Exception:
                session.expunge(row)
                raise
        row.spec = {**row.spec, "commit": commit}
        row.priority = priority or "normal"
        row.held = held
        _event(session, ev.TASK_CREATED, TaskInfo.of(row), flush=False)
        row.resolved_inputs = resolved
        _set_status(session, row, "queued", flush=False)
        return TaskInfo.of(row), payload(row)

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
            spec = self.resolve_template(session, ref).spec
        commit = self.commit_for(spec)
        with self.store.session() as session:
            template = self.resolve_template(session, ref)
            made = [
                self.run_in(
                    session, ref, commit=commit, priority=priority, template=template, params=params
                )
                for params in overrides
            ]
        return [(info, self.push(info, job)) for info, job in made]

    def start(self, task_id: str, worker: str) -> TaskInfo:
        """A worker began the task (applied from the worker's report)."""
        with self.store.session() as session:
            row = _load(session, task_id, for_update=True)
            _check_transition(row, "running")
            row.worker = worker
            _set_status(session, row, "running")
            return TaskInfo.of(row)

    def finish(
        self,
        task_id: str,
        status: str,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        artifacts: Sequence[Mapping[str, Any]] = (),
        duration_s: float | None = None,
    ) -> TaskInfo:
        """The task ended: completed, failed or aborted, with what the worker reported. The
        event carries the metrics, so task triggers can test them."""
        if status not in FINISHED:
            raise UserError(f"{status!r} is not a final status ({', '.join(FINISHED)})")
        with self.store.session() as session:
            row = _load(session, task_id, for_update=True)
            _check_transition(row, status)
            row.exit_code = exit_code
            row.error = error
            row.metrics = dict(metrics or {})
            if environment:
                row.environment = dict(environment)
            row.artifacts = [dict(a) for a in artifacts]
            row.duration_s = duration_s
            row.held = False
            _set_status(session, row, status)
            return TaskInfo.of(row)

    def keep_final_facts(
        self,
        task_id: str,
        status: str,
        *,
        exit_code: int | None = None,
        environment: Mapping[str, Any] | None = None,
        artifacts: Sequence[Mapping[str, Any]] = (),
        duration_s: float | None = None,
    ) -> bool:
        """A worker's final report for a task that had already ended (aborted by a user
        while it ran, or settled as lost): record what the run reported where the store has
        nothing yet: how long it ran, its environment, its artifacts (the stored log among
        them), and its exit code when it reports the same ending. The status, its reason and
        its time stay as the store decided them. Returns whether anything changed; a report
        applied again changes nothing."""
        with self.store.session() as session:
            row = _load(session, task_id, for_update=True)
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
            return changed

    def requeue(self, task_id: str, reason: str, *, attempt: bool) -> TaskInfo:
        """Put a running task back on its queue: its worker stopped before it finished (a
        stop with `--abort-on-stop`), or was lost and the task has retries left (`attempt`
        counts it against them).

        The old job is deleted while the row is locked and before the change commits: if
        that fails (Redis down), nothing changed and the caller tries again later; a stale
        job left behind a `queued` row would count as present to reconcile and the task
        would never run. The fresh job is pushed after commit (reconcile pushes it if Redis
        went away in between)."""
        with self.store.session() as session:
            row = _load(session, task_id, for_update=True)
            if row.status != "running":
                raise Conflict(f"task {task_id} is {row.status}; only a running task goes back")
            self.queues.remove(task_id)
            if attempt:
                row.attempt = (row.attempt or 0) + 1
            row.error = reason
            row.worker = None
            row.started_at = None
            _set_status(session, row, "queued")
            info, job = TaskInfo.of(row), payload(row)
        self.push(info, job)
        return info

    def abort_in(self, session: Session, row: Task, reason: str) -> TaskInfo:
        """Abort inside the caller's transaction; the caller cancels the job after commit."""
        _check_transition(row, "aborted")
        row.error = reason
        row.held = False
        _set_status(session, row, "aborted")
        return TaskInfo.of(row)

    def repoint_in(self, session: Session, row: Task, *, event_seq: int, **options: Any) -> None:
        """Re-point a waiting run at a newer event (`on_busy: coalesce`): every field a
        trigger renders (parameters, inputs and their resolved versions, tags) is rendered
        again from the run's template with `options` (see `CloneOptions`), exactly as a new
        run for this event would have it; the earlier events stay listed. Raises, changing
        nothing, if the newer event's run could not start."""
        template = session.get(Task, row.parent_id) if row.parent_id else None
        if template is None:
            raise NotFound("template", row.parent_id or "?", f"task {row.id} has no template")
        with session.no_autoflush:
            fresh = self._new_row(session, template, CloneOptions(**options))
            parameters, inputs, tags = fresh.parameters, fresh.inputs, set(fresh.tags)
            session.expunge(fresh)  # only its rendered fields are wanted
            resolved = _resolve_inputs(session, inputs or {}, parameters or {})
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

    def abort(self, task_id: str, reason: str = "aborted by user") -> TaskInfo:
        """Mark a task aborted, then stop its job in Redis if it had one."""
        with self.store.session() as session:
            row = _load(session, task_id, for_update=True)
            had_job = row.status in ("queued", "running") and not row.held
            info = self.abort_in(session, row, reason)
        if had_job:
            # If Redis is unreachable now, reconcile removes the waiting job later.
            with contextlib.suppress(ServiceUnavailable):
                self.queues.cancel(task_id)
        return info

    def reconcile(self, now: dt.datetime | None = None) -> ReconcileReport:
        """Make Redis agree with the store: every queued task has its job (enqueued once,
        atomically, even with several reconcilers), and the 1,000 most recently aborted tasks
        keep no job waiting.

        A queued task's job that RQ says *finished* ran without its reports reaching the
        store (they were erased before the scheduler read them): once every report is read
        and the job ended `STALE_FINISHED_JOB_S` before `now`, it is replaced by a new one,
        else the task would stay queued forever."""
        report = ReconcileReport()
        with self.store.reader() as session:
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
        present = self.queues.existing([t.id for t in queued])
        now = now or dt.datetime.now(dt.timezone.utc)
        ended = self.queues.finished_before(
            sorted(present), now - dt.timedelta(seconds=STALE_FINISHED_JOB_S)
        )
        if ended and self.queues.reports_all_read():
            for task_id in sorted(ended):
                self.queues.remove(task_id)
                present.discard(task_id)
                report.replaced.append(task_id)
        for row in queued:
            if row.id in present:
                continue
            info = TaskInfo.of(row)
            if self.queues.enqueue(
                row.id,
                payload(row),
                queue=row.queue,
                priority=row.priority,
                timeout_s=int(row.spec["timeout_s"]),
            ):
                report.enqueued.append(info.id)
        for task_id in sorted(self.queues.existing(aborted)):
            job = self.queues.job(task_id)
            if job is not None and job.get_status() == "queued":
                self.queues.remove(task_id)
                report.removed.append(task_id)
        return report

    # -- reading ---------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskInfo:
        with self.store.reader() as session:
            return TaskInfo.of(_load(session, task_id))

    def template(self, ref: str) -> TaskInfo:
        with self.store.reader() as session:
            return TaskInfo.of(self.resolve_template(session, ref))

    def list(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Task summaries, newest first (the same query `task list` runs without SQLAlchemy)."""
        if status and status not in TRANSITIONS:
            raise UserError(f"--status: {status!r} is not one of {', '.join(TRANSITIONS)}")
        with self.store.reader() as session:
            conn = session.connection().connection.driver_connection
            return listing.list_tasks(conn, project=project, status=status, tag=tag, limit=limit)


# -- helpers -------------------------------------------------------------------------------


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return bool(templating.placeholders(value)) or "$${" in value
    if isinstance(value, list):
        return any(_has_placeholder(v) for v in value)
    if isinstance(value, dict):
        return any(_has_placeholder(v) for v in value.values())
    return False


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"{field}: {message}" if field else message
    return str(exc)


def _load(session: Session, task_id: str, *, for_update: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id).options(selectinload(Task.tag_rows))
    if for_update:
        query = rows.for_update(session, query, of=Task)
    row = session.scalars(query).first()
    if row is None:
        raise NotFound("task", task_id, "list tasks with: retrain task list")
    return row


def _check_transition(row: Task, new: str) -> None:
    if new not in TRANSITIONS[row.status]:
        raise Conflict(
            f"task {row.id} is {row.status}; it cannot become {new}"
            + ("; clone it to run it again" if row.status in FINISHED else "")
        )


def _set_status(session: Session, row: Task, status: str, *, flush: bool = True) -> None:
    """The one path for every status change: check it is allowed, change status, stamp the
    time, and write the event in the same transaction (without `flush`, at the next flush:
    the scheduler writes a batch of runs at once)."""
    _check_transition(row, status)
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
    _event(session, EVENT_OF_STATUS[status], TaskInfo.of(row), flush=flush)


def _event(session: Session, kind: str, info: TaskInfo, *, flush: bool = True) -> None:
    ev.record_for(
        session,
        kind,
        info,
        {
            "status": info.status,
            "type": info.type,
            "queue": info.queue,
            "parent": info.parent,
            "trigger": info.trigger,
            "metrics": info.metrics,
        },
        flush=flush,
    )


def _entry_paths(spec: ExecutionSpec) -> list[str]:
    base = "" if spec.working_dir == "." else spec.working_dir.rstrip("/") + "/"
    if spec.entry.script:
        return [base + spec.entry.script.removeprefix("./")]
    module = spec.entry.module.replace(".", "/") if spec.entry.module else ""
    return [f"{base}{module}.py", f"{base}{module}/__main__.py", f"{base}{module}/__init__.py"]


def _check_placeholders(
    spec: ExecutionSpec, params: Mapping[str, Any], inputs: Mapping[str, str]
) -> None:
    """`${params.X}` and `${inputs.N}` in args and env name things the task has."""
    known = {f"params.{k}" for k in params} | {f"inputs.{k}" for k in inputs}
    for i, arg in enumerate(spec.args):
        templating.check(arg, known.__contains__, where=f"args[{i}]")
    for key, value in spec.env.items():
        templating.check(value, known.__contains__, where=f"env {key}")


def _check_input_refs(
    session: Session, inputs: Mapping[str, str], params: Mapping[str, Any]
) -> None:
    for name, ref in inputs.items():
        match = _PARAM_REF.match(ref)
        if match:
            if match.group(1) not in params:
                raise UserError(f"--input {name}: {ref} names no parameter of the task")
            continue
        if not _ID.match(ref):
            raise UserError(
                f"--input {name}: {ref!r} is neither a dataset version id nor "
                "${params.SECTION/NAME}"
            )
        dataset_queries.load_version(session, ref)


def _resolve_inputs(
    session: Session, inputs: Mapping[str, str], params: Mapping[str, Any]
) -> dict[str, Any]:
    """Each input as the final dataset version it names now (frozen into the job)."""
    resolved: dict[str, Any] = {}
    for name, ref in inputs.items():
        match = _PARAM_REF.match(ref)
        version_id = str(params.get(match.group(1), "")) if match else ref
        try:
            row = dataset_queries.load_version(session, version_id)
        except NotFound:
            raise UserError(
                f"input {name}: {ref} is {version_id!r}, which is no dataset version"
            ) from None
        if row.status != "final":
            raise Conflict(f"input {name}: dataset version {version_id} is a draft; finalize it")
        resolved[name] = {
            "version_id": row.id,
            "manifest_sha256": row.manifest_sha256,
            "project": row.dataset.project.path,
            "name": row.dataset.name,
            "version": row.version,
        }
    return resolved
