"""What `retrain task show` shows, as JSON-ready records read with SQL on a bare driver
connection: from `orchestrator.store.lean` (no SQLAlchemy, no pydantic imported) or from under
a SQLAlchemy session (`TaskService.lookup`, `series`, `lineage.run_lineage`, which wrap these
records in their pydantic views). One query per concept, written here.

A record has the fields of its view (`TaskInfo`, `RunLineage`), in its order, with times as
pydantic writes them.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.errors import NotFound, UserError
from orchestrator.models import records as model_records
from orchestrator.models.records import model_ref
from orchestrator.store.lean import Row, fetch, json_time, json_value, placeholders

TEMPLATE = "template"

ID = re.compile(r"^[0-9a-f]{32}$")
"""What every entity id looks like (`inputs.ID`); for a task, anything else is a reference."""

TASK_SQL = (
    "SELECT t.*, p.path AS project_path FROM tasks t JOIN projects p ON p.id = t.project_id "
    "WHERE t.id = %s"
)
TEMPLATE_SQL = (
    "SELECT t.id FROM tasks t JOIN projects p ON p.id = t.project_id "
    "WHERE p.path = %s AND t.name = %s AND t.kind = 'template'"
)
TEMPLATE_ORDER = " ORDER BY t.revision DESC, t.created_at DESC LIMIT 1"
TAGGED_SQL = " AND t.id IN (SELECT task_id FROM task_tags WHERE tag = %s)"
TAGS_SQL = "SELECT tag FROM task_tags WHERE task_id = %s ORDER BY tag"
SERIES_SQL = (
    "SELECT name, count, last, step, min, max, points FROM metric_series "
    "WHERE task_id = %s ORDER BY name"
)
EVENTS_SQL = (
    "SELECT seq, kind, entity_id, project, name, payload, created_at FROM events WHERE seq IN ({})"
)
MODELS_SQL = (
    "SELECT m.id, p.path AS project, m.name, m.uri, m.task_id, m.created_at FROM models m "
    "JOIN projects p ON p.id = m.project_id WHERE m.task_id = %s "
    "ORDER BY m.created_at DESC, m.id"
)

NOT_FOUND_HINT = "list templates with: retrain task list --templates"


def template_id(conn: Any, project: str, name: str, tag: str) -> str | None:
    """The newest revision of the template project/name (carrying `tag` when one is given)."""
    sql, params = TEMPLATE_SQL, [project, name]
    if tag:
        sql, params = sql + TAGGED_SQL, [*params, tag]
    rows = fetch(conn, sql + TEMPLATE_ORDER, params)
    return rows[0]["id"] if rows else None


def task(conn: Any, task_id: str) -> Row | None:
    """`TaskInfo` of a task as JSON, None when there is no such task."""
    rows = fetch(conn, TASK_SQL, [task_id])
    if not rows:
        return None
    r = rows[0]
    tags = [t["tag"] for t in fetch(conn, TAGS_SQL, [task_id])]

    def obj(column: str) -> dict[str, Any]:
        value = json_value(r[column])
        return dict(value) if isinstance(value, dict) else {}

    spec = json_value(r["spec"])
    artifacts = json_value(r["artifacts"])
    return {
        "id": r["id"],
        "project": r["project_path"],
        "name": r["name"],
        "type": r["type"],
        "status": r["status"],
        "tags": tags,
        "comment": r["comment"],
        "kind": r["kind"] or "run",
        "revision": r["revision"],
        "template": r["template_id"],
        "parent": r["parent_id"],
        "trigger": r["trigger_name"],
        "trigger_event": r["trigger_event_seq"],
        "trigger_entity": (
            {"kind": r["trigger_entity_kind"] or "", "id": r["trigger_entity_id"]}
            if r["trigger_entity_id"]
            else None
        ),
        "queue": r["queue"],
        "priority": r["priority"],
        "created_at": json_time(r["created_at"]),
        "queued_at": json_time(r["queued_at"]),
        "started_at": json_time(r["started_at"]),
        "finished_at": json_time(r["finished_at"]),
        "worker": r["worker"],
        "exit_code": r["exit_code"],
        "error": r["error"],
        "metrics": obj("metrics"),
        "spec": dict(spec) if isinstance(spec, dict) else {},
        "parameters": obj("parameters"),
        "inputs": obj("inputs"),
        "resolved_inputs": obj("resolved_inputs"),
        "environment": obj("environment"),
        "artifacts": list(artifacts) if isinstance(artifacts, list) else [],
        "duration_s": None if r["duration_s"] is None else float(r["duration_s"]),
        "attempt": r["attempt"] or 0,
        "logged_params": obj("logged_params"),
        # Not a `TaskInfo` field: what `lineage` needs, taken off before showing.
        "_coalesced": json_value(r["coalesced_events"]) or [],
    }


def lookup(conn: Any, ref: str) -> Row:
    """What `task show REF` shows: any task by id, or a template by `project/name[@tag]`."""
    if ID.match(ref):
        found = task(conn, ref)
        if found is None:
            raise NotFound("task", ref, "list tasks with: retrain task list")
        return found
    try:
        project, name, tag = split_ref(ref)
    except UserError:
        raise NotFound(
            "task", ref, "name a task by its id, project/name or project/name@tag"
        ) from None
    found_id = template_id(conn, project, name, tag)
    found = task(conn, found_id) if found_id is not None else None
    if found is None:
        raise NotFound("template", ref, NOT_FOUND_HINT)
    return found


def split_ref(ref: str) -> tuple[str, str, str]:
    """`project/name@tag` -> (project, name, tag); the tag may be empty."""
    path, at, tag = ref.partition("@")
    project, _, name = path.rpartition("/")
    if not project or not name:
        raise UserError(f"template {ref!r}: expected an id, project/name or project/name@tag")
    if at and not tag.strip():
        raise UserError(f"template {ref!r}: an empty tag after '@' (project/name@tag)")
    return project, name, tag


def series(conn: Any, task_id: str) -> dict[str, dict[str, Any]]:
    """A run's stored metric series: name -> {count, last, step, min, max, points}."""
    out: dict[str, dict[str, Any]] = {}
    for r in fetch(conn, SERIES_SQL, [task_id]):
        step = r["step"]
        points = json_value(r["points"])
        out[r["name"]] = {
            "count": r["count"],
            "last": r["last"],
            "step": int(step) if step is not None and float(step).is_integer() else step,
            "min": r["min"],
            "max": r["max"],
            "points": list(points or []),
        }
    return out


def lineage(conn: Any, info: Row) -> Row:
    """`RunLineage` of the task record `info` as JSON: the event that made it, the events it
    absorbed, the models it registered."""
    coalesced = [int(s) for s in info["_coalesced"]]
    seqs = [*coalesced]
    if info["trigger_event"] is not None:
        seqs.append(info["trigger_event"])
    events: dict[int, Row] = {}
    if seqs:
        for e in fetch(conn, EVENTS_SQL.format(placeholders(len(seqs))), seqs):
            payload = json_value(e["payload"])
            events[int(e["seq"])] = {
                "seq": int(e["seq"]),
                "kind": e["kind"],
                "entity": {"kind": e["kind"].split(".", 1)[0], "id": e["entity_id"]},
                "project": e["project"],
                "name": e["name"],
                "version": (payload or {}).get("version") if isinstance(payload, dict) else None,
                "time": json_time(e["created_at"]),
            }
    models = [
        model_ref(m)
        for m in fetch(conn, MODELS_SQL, [info["id"]])
    ]
    return {
        "cause": events.get(info["trigger_event"] if info["trigger_event"] is not None else -1),
        "absorbed_events": [events[s] for s in coalesced if s in events],
        "models": models,
    }


def event_label(event: Row) -> str:
    """An event record as `task show` names it (`EventRef.label`)."""
    what = f"{event['project']}/{event['name']} {event['version'] or ''}".strip()
    return f"event {event['seq']} {event['kind']}: {what} ({event['entity']['id']})"


def show(conn: Any, ref: str) -> Row:
    """`task show REF --json`: the task, its lineage, its series' summaries and, for a
    template, its revisions and latest runs."""
    from orchestrator.tasks.listing import template_overview

    info = lookup(conn, ref)
    traced = lineage(conn, info)
    del info["_coalesced"]
    shown = {**info, **traced}
    found = series(conn, info["id"]) if info["status"] != "draft" else {}
    shown["series"] = {
        name: {k: v for k, v in s.items() if k != "points"} for name, s in found.items()
    }
    if info["kind"] == TEMPLATE:
        shown.update(template_overview(conn, info["project"], info["name"]))
    return shown


def model_show(conn: Any, model_id: str) -> Row:
    """`model show --json`: the model (`ModelInfo`'s fields), the run that registered it and
    the task that run was cloned from (`RunRef`'s), and the inputs the run resolved
    (`ModelLineage`; `tasks.lineage.model_lineage` runs this under the store's session)."""
    info = model_records.load(conn, model_id)
    run = task(conn, info["task_id"]) if info["task_id"] else None
    template = task(conn, run["parent"]) if run and run["parent"] else None
    return {
        **info,
        "run": _run_ref(run),
        "template": _run_ref(template),
        "inputs": dict(run["resolved_inputs"]) if run else {},
    }


def _run_ref(task: Row | None) -> Row | None:
    if task is None:
        return None
    return {
        "id": task["id"],
        "project": task["project"],
        "name": task["name"],
        "status": task["status"],
        "template": task["parent"],
        "trigger": task["trigger"],
        "trigger_entity": task["trigger_entity"],
        "inputs": [],
        "created_at": task["created_at"],
    }
