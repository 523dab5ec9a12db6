"""`orchestrator.Task`: templates and runs from Python, with the names ClearML users know.

from orchestrator import Task

template = Task.get("dataset_blogpost/training")          # or an id, or project/name@tag
run = Task.clone(source=template, parameter_overrides={"General/dataset_id": version_id})
Task.enqueue(run, queue_name="gpu")
run.reload().get_status()                                   # queued, running, completed ...
run.get_parameters()                                        # {"General/dataset_id": ...}
run.get_models()["output"]                                  # the models it registered

Every call goes through the same services as the CLI, so the same checks apply and the same
`RetrainError`s are raised (`NotFound`, `UserError`, `Conflict`, ...).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError
from orchestrator.runtime import Runtime, default_runtime
from orchestrator.sdkbase import Handle

if TYPE_CHECKING:
    from orchestrator.models.sdk import Model
    from orchestrator.tasks.views import TaskInfo


class Task(Handle):
    """One task: a template or a run. Get instances from `Task.get` or `Task.clone`."""

    _info: TaskInfo

    def __init__(self, info: TaskInfo, runtime: Runtime) -> None:
        self._info = info
        self._runtime = runtime

    # -- finding and making tasks ----------------------------------------------------------

    @classmethod
    def get(
        cls,
        task_id: str | None = None,
        *,
        project_name: str | None = None,
        task_name: str | None = None,
        tags: Sequence[str] = (),
        runtime: Runtime | None = None,
    ) -> Task:
        """A task by id, or by reference: `task_id` may also be `project/name` or
        `project/name@tag`, resolved exactly as `retrain task show` and `task run` resolve
        it; or give `project_name`, `task_name` and at most one tag."""
        rt = runtime or default_runtime()
        if task_id is None:
            if not (project_name and task_name):
                raise UserError("Task.get needs task_id, or project_name and task_name")
            if len(tags) > 1:
                raise UserError(f"Task.get: tags: give at most one tag, got {list(tags)}")
            task_id = f"{project_name}/{task_name}" + (f"@{tags[0]}" if tags else "")
        return cls(rt.tasks.lookup(task_id), rt)

    get_task = get
    """ClearML's name for `get`."""

    @classmethod
    def clone(
        cls,
        source: Task | str | None = None,
        *,
        name: str | None = None,
        parameter_overrides: Mapping[str, Any] | None = None,
        input_overrides: Mapping[str, str] | None = None,
        queue: str | None = None,
        tags: Sequence[str] = (),
        allow_new_params: bool = False,
        source_task: Task | str | None = None,
        runtime: Runtime | None = None,
    ) -> Task:
        """A new draft copied from `source` (a `Task`, an id or a template reference) with
        overrides, its parent recorded: `retrain task clone`. Values keep their Python type
        where the template's parameter has that type; strings are converted as on the
        command line. `source_task` is ClearML's name for `source`."""
        given = source if source is not None else source_task
        if given is None:
            raise UserError("Task.clone needs source (a Task, an id or project/name)")
        rt = _runtime_of(given, runtime)
        info = rt.tasks.clone(
            given.id if isinstance(given, Task) else given,
            name=name,
            params=dict(parameter_overrides or {}),
            inputs=dict(input_overrides or {}),
            queue=queue,
            tags=list(tags),
            allow_new_params=allow_new_params,
        )
        return cls(info, rt)

    @classmethod
    def enqueue(
        cls,
        task: Task | str,
        queue_name: str | None = None,
        *,
        priority: str | None = None,
        runtime: Runtime | None = None,
    ) -> Task:
        """Queue a draft on `queue_name` (default: its own queue): its branch and inputs
        are frozen in the store, then its job goes to Redis (`retrain task enqueue`). If
        Redis is unreachable the task stays queued in the store, a `RuntimeWarning` says
        so, and the scheduler's reconcile sends it."""
        if priority not in (None, "high", "normal", "low"):
            raise UserError(f"priority: {priority!r} is not high, normal or low")
        rt = _runtime_of(task, runtime)
        info, sent = rt.tasks.enqueue(
            task.id if isinstance(task, Task) else task,
            queue=queue_name,
            priority=priority,  # type: ignore[arg-type]  # checked above
        )
        if not sent:
            warnings.warn(
                f"task {info.id} is queued in the store but Redis is unreachable; "
                "the next reconcile sends it",
                RuntimeWarning,
                stacklevel=2,
            )
        if isinstance(task, Task):
            task._info = info
            return task
        return cls(info, rt)

    @classmethod
    def get_tasks(
        cls,
        *,
        project_name: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        dataset: str | None = None,
        template: Task | str | None = None,
        limit: int = 50,
        runtime: Runtime | None = None,
    ) -> list[Task]:
        """Tasks newest first, filtered like `retrain task list`: `dataset` gives the runs
        that took that version as an input or were fired by it, `template` the runs
        cloned from it."""
        rt = runtime or default_runtime()
        parent = None
        if template is not None:
            parent = template.id if isinstance(template, Task) else rt.tasks.template(template).id
        found = rt.tasks.list(
            project=project_name,
            status=status,
            tag=tag,
            dataset=dataset,
            parent=parent,
            limit=limit,
        )
        return [cls(rt.tasks.get(row["id"]), rt) for row in found]

    # -- reading ---------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """As of the last read; `reload()` reads it again."""
        return self._info.status

    @property
    def parent(self) -> str | None:
        """The id of the task this one was cloned from."""
        return self._info.parent

    @property
    def trigger(self) -> str | None:
        return self._info.trigger

    @property
    def trigger_entity(self) -> dict[str, str] | None:
        """What the triggering event was about: {"kind": "dataset", "id": VERSION_ID}."""
        return dict(self._info.trigger_entity) if self._info.trigger_entity else None

    @property
    def queue(self) -> str:
        return self._info.queue

    @property
    def created_at(self) -> dt.datetime:
        return self._info.created_at

    @property
    def info(self) -> TaskInfo:
        """Everything `retrain task show --json` prints about the task itself."""
        return self._info

    def get_status(self) -> str:
        """The status now (read from the store)."""
        return self.reload().status

    def reload(self) -> Task:
        self._info = self._runtime.tasks.get(self.id)
        return self

    def get_parameters(self) -> dict[str, Any]:
        """`Section/name` -> value, typed as stored (numbers stay numbers)."""
        return dict(self._info.parameters)

    def get_parameter(self, name: str, default: Any = None) -> Any:
        return self._info.parameters.get(name, default)

    def get_inputs(self) -> dict[str, Any]:
        """The input dataset versions this run was queued with: name -> {version_id,
        project, name, version, manifest_sha256}; empty before it is queued."""
        return dict(self._info.resolved_inputs)

    def get_last_scalar_metrics(self) -> dict[str, Any]:
        """The metrics the run reported (`metrics.json`)."""
        return dict(self._info.metrics)

    def get_models(self) -> dict[str, list[Model]]:
        """As ClearML: {"input": [...], "output": [...]}; output lists the models this run
        registered, newest first. Runs take datasets, not models, as inputs, so "input" is
        empty."""
        from orchestrator.models.sdk import Model
        from orchestrator.tasks.lineage import run_lineage

        traced = run_lineage(self._runtime.store, self.id)
        return {
            "input": [],
            "output": [Model(m.id, runtime=self._runtime) for m in traced.models],
        }

    # -- changing --------------------------------------------------------------------------

    def abort(self) -> Task:
        """`retrain task abort`: a draft, queued or running task becomes aborted."""
        self._info = self._runtime.tasks.abort(self.id)
        return self

    mark_stopped = abort
    """ClearML's name for `abort`."""

    def __repr__(self) -> str:
        return f"<Task {self._info.label} {self.id} {self._info.status}>"


def _runtime_of(task: Task | str, given: Runtime | None) -> Runtime:
    if given is not None:
        return given
    return task._runtime if isinstance(task, Task) else default_runtime()
