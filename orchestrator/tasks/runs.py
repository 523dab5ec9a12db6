"""`retrain task run` on a bare driver connection (`store.lean.writer`), without SQLAlchemy or
pydantic: what `TaskService.run` does through the ORM (`queueing.run_in`), in one transaction:
the source resolved as `resolution.resolve_source` resolves it, the run's columns from
`overrides.clone_values`, its inputs frozen by `inputs.resolve_inputs`, the row with its tags
and input rows, its `task.created` and `task.queued` events; then the job payload
(`jobs.payload`) that the caller pushes to Redis after the commit.

The caller reads the result back with `records.task` in the same transaction: what it prints
is what `task show --json` shows, field for field the ORM path's `TaskInfo`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import NotFound
from orchestrator.store import eventlog, lean
from orchestrator.store.lean import Row
from orchestrator.tasks import jobs, records
from orchestrator.tasks.inputs import resolve_inputs
from orchestrator.tasks.overrides import CloneOptions, clone_values
from orchestrator.tasks.states import EVENT_FIELDS

TASK_COLUMNS = (
    "id", "project_id", "name", "type", "status", "comment", "kind", "revision", "template_id",
    "parent_id", "trigger_name", "trigger_event_seq", "trigger_entity_kind", "trigger_entity_id",
    "queue", "priority", "created_at", "queued_at", "started_at", "finished_at", "worker",
    "exit_code", "error", "metrics", "spec", "parameters", "inputs", "resolved_inputs", "held",
    "coalesced_events", "environment", "artifacts", "duration_s", "attempt", "logged_params",
)  # fmt: skip
"""Every column of `tasks` (the ORM's `Task`; a test checks they agree)."""
JSON_COLUMNS = frozenset(
    {
        "metrics", "spec", "parameters", "inputs", "resolved_inputs", "coalesced_events",
        "environment", "artifacts", "logged_params",
    }
)  # fmt: skip
TIME_COLUMNS = frozenset({"created_at", "queued_at", "started_at", "finished_at"})
DEFAULTS: dict[str, Any] = {
    "revision": None,
    "started_at": None,
    "finished_at": None,
    "worker": None,
    "exit_code": None,
    "error": None,
    "held": False,
    "coalesced_events": [],
    "environment": {},
    "artifacts": [],
    "duration_s": None,
    "attempt": 0,
    "logged_params": {},
}
"""What the ORM's column defaults give a new run (the columns `clone_values` leaves out)."""

INSERT_TASK_SQL = (
    f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) "  # noqa: S608 (constant column names)
    f"VALUES ({lean.placeholders(len(TASK_COLUMNS))})"
)
INSERT_TAG_SQL = "INSERT INTO task_tags (task_id, tag) VALUES (%s, %s)"
INSERT_INPUT_SQL = "INSERT INTO task_inputs (task_id, name, version_id) VALUES (%s, %s, %s)"
PROJECT_SQL = "SELECT project_id FROM tasks WHERE id = %s"


class NeedsCommit(Exception):
    """The source names a branch, not a commit: the caller asks the repository (outside any
    transaction: it may be a network round trip) and runs again with the answer."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__("the source's branch must be resolved to a commit")
        self.spec = spec


def source(conn: Any, ref: str) -> Row:
    """What `task run` copies (`resolution.resolve_source`): a template by reference, or any
    task by id; the same errors."""
    if records.ID.match(ref):
        found = records.task(conn, ref)
        if found is None:
            raise NotFound("task", ref, "list tasks with: retrain task list")
        return found
    project, name, tag = records.split_ref(ref)
    found_id = records.template_id(conn, project, name, tag)
    found = records.task(conn, found_id) if found_id is not None else None
    if found is None:
        raise NotFound("template", ref, records.NOT_FOUND_HINT)
    return found


def run(
    conn: Any,
    ref: str,
    options: CloneOptions,
    *,
    priority: str | None = None,
    commit: str | None = None,
) -> tuple[Row, dict[str, Any]]:
    """Clone `ref` with `options` and queue the clone in the open transaction of `conn`;
    returns the run's `TaskInfo` record and its job payload. `commit` is the one the source's
    branch points at (`NeedsCommit` when the source records none and `commit` is None)."""
    template = source(conn, ref)
    commit = template["spec"].get("commit") or commit
    if commit is None:
        raise NeedsCommit(template["spec"])
    values, tags = clone_values(conn, template, options)
    resolved = resolve_inputs(conn, values["inputs"], values["parameters"])
    project_id = lean.fetch(conn, PROJECT_SQL, [template["id"]])[0]["project_id"]
    row = {
        **DEFAULTS,
        **values,
        "project_id": project_id,
        "spec": {**values["spec"], "commit": commit},
        "priority": priority or "normal",
        "status": "queued",
        "resolved_inputs": resolved,
        "queued_at": lean.utcnow(),
    }
    lean.execute(conn, INSERT_TASK_SQL, [_column(conn, c, row[c]) for c in TASK_COLUMNS])
    task_id = row["id"]
    lean.executemany(conn, INSERT_TAG_SQL, [(task_id, t) for t in tags])
    links = sorted(jobs.input_versions(resolved).items())
    lean.executemany(conn, INSERT_INPUT_SQL, [(task_id, n, v) for n, v in links])
    info = records.task(conn, task_id)
    assert info is not None
    del info["_coalesced"]
    # As `queueing.run_in`: created (as the draft it was cloned as), then queued.
    for kind, status in ((eventlog.TASK_CREATED, "draft"), (eventlog.TASK_QUEUED, "queued")):
        fields = {name: info[name] for name in EVENT_FIELDS}
        eventlog.record_event(
            conn,
            kind,
            entity_id=task_id,
            project=info["project"],
            name=info["name"],
            tags=info["tags"],
            payload={**fields, "status": status},
        )
    job = jobs.payload(
        task_id=task_id,
        attempt=row["attempt"],
        queued_at=row["queued_at"],
        project=info["project"],
        name=row["name"],
        type=row["type"],
        queue=row["queue"],
        priority=row["priority"],
        spec=row["spec"],
        parameters=row["parameters"],
        resolved_inputs=resolved,
    )
    return info, job


def _column(conn: Any, name: str, value: Any) -> Any:
    """A value as the ORM's column types store it."""
    if name in JSON_COLUMNS:
        return json.dumps(value)
    if name in TIME_COLUMNS and value is not None:
        return lean.stamp(conn, value)
    return value
