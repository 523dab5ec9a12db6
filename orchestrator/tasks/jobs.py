"""The job payload a worker receives, from a task's columns alone (so reconcile rebuilds
exactly the same job after a Redis loss). SQLAlchemy-free: `views.payload` builds it from an
ORM row, `task run`'s bare-driver path (`tasks.runs`) from the values it inserts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.git import Mirror

PAYLOAD_VERSION = 1


def commit_for(mirror: Mirror, spec: Mapping[str, Any]) -> str:
    """The commit a task runs: its recorded one, or what its branch points at now."""
    if spec.get("commit"):
        return str(spec["commit"])
    ref = spec.get("branch") or "HEAD"
    commit = mirror.head_of(str(spec["repo"]), ref)
    if commit is None:
        raise UserError(f"branch {ref!r} no longer exists in {spec['repo']}")
    return commit


def execution_id(queued_at: dt.datetime | None) -> str | None:
    """Which execution of its attempt a job is: the time the task was (re-)queued, which every
    enqueue and every requeue (a released run goes back with the same attempt) renews. It is
    in the signed payload and the worker puts it in each report, so the reports of an earlier
    execution (replayed by anyone with Redis access) are told from the current one's."""
    if queued_at is None:
        return None
    return queued_at.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def payload(
    *,
    task_id: str,
    attempt: int | None,
    queued_at: dt.datetime | None,
    project: str,
    name: str,
    type: str,
    queue: str,
    priority: str,
    spec: Mapping[str, Any],
    parameters: Mapping[str, Any] | None,
    resolved_inputs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The job's only argument: everything a worker needs, with no database access."""
    return {
        "version": PAYLOAD_VERSION,
        "task_id": task_id,
        "attempt": attempt or 0,
        "execution": execution_id(queued_at),
        "project": project,
        "name": name,
        "type": type,
        "queue": queue,
        "priority": priority,
        "spec": dict(spec),
        "parameters": dict(parameters or {}),
        "inputs": dict(resolved_inputs or {}),
    }


def input_versions(resolved_inputs: Mapping[str, Any] | None) -> dict[str, str]:
    """A run's resolved inputs as `task_inputs` rows hold them: input name -> version id."""
    return {
        str(name): str(entry["version_id"])
        for name, entry in (resolved_inputs or {}).items()
        if isinstance(entry, dict) and entry.get("version_id")
    }
