"""Registered models as plain JSON-ready records, listed with SQL on a bare driver connection:
the one data path of `retrain model list`, whether the connection comes from
`orchestrator.store.lean` (no SQLAlchemy, no pydantic imported) or from under a SQLAlchemy
session (`ModelService.list`, which wraps the records in `ModelInfo`).

A record has `ModelInfo`'s fields, in its order, with times as pydantic writes them.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from orchestrator.errors import NotFound, UserError
from orchestrator.store.lean import Row, fetch, json_time, json_value, placeholders

MODELS_SQL = (
    "SELECT m.id, p.path AS project, m.name, m.uri, m.published, m.task_id, m.metadata, "
    "m.created_at FROM models m JOIN projects p ON p.id = m.project_id"
)
PROJECTS_SQL = "SELECT id, path FROM projects"
NAMES_SQL = "SELECT DISTINCT name FROM models"
TAGGED_SQL = "SELECT model_id FROM model_tags WHERE tag = %s"
TAGS_SQL = "SELECT model_id, tag FROM model_tags WHERE model_id IN ({})"
TASK_NAMES_SQL = (
    "SELECT t.id, p.path, t.name FROM tasks t JOIN projects p ON p.id = t.project_id "
    "WHERE t.id IN ({})"
)


def model_ref(m: Row) -> Row:
    """A registered model as `dataset show` and `task show` list it (`ModelRef`'s fields)."""
    return {
        "id": m["id"],
        "project": m["project"],
        "name": m["name"],
        "uri": m["uri"],
        "task_id": m["task_id"],
        "created_at": json_time(m["created_at"]),
    }


def list_models(
    conn: Any,
    *,
    project: str | None = None,
    name: str | None = None,
    tag: str | None = None,
    published: bool | None = None,
    model_id: str | None = None,
    limit: int = 50,
) -> list[Row]:
    """Models newest first. `project` and `name` are globs (`*` crosses `/` in projects,
    so `team/*` reaches sub-projects); `tag` must be present; `published` filters on the
    flag when given."""
    if limit < 1:
        raise UserError("--limit: must be at least 1")
    where: list[str] = []
    params: list[Any] = []
    if project is not None:
        ids = [
            r["id"]
            for r in fetch(conn, PROJECTS_SQL, ())
            if fnmatch.fnmatchcase(r["path"], project)
        ]
        if not ids:
            return []
        where.append(f"m.project_id IN ({placeholders(len(ids))})")
        params += ids
    if name is not None:
        names = [
            r["name"] for r in fetch(conn, NAMES_SQL, ()) if fnmatch.fnmatchcase(r["name"], name)
        ]
        if not names:
            return []
        where.append(f"m.name IN ({placeholders(len(names))})")
        params += names
    if tag is not None:
        where.append(f"m.id IN ({TAGGED_SQL})")
        params.append(tag)
    if published is not None:
        where.append("m.published = %s")
        params.append(published)
    if model_id is not None:
        where.append("m.id = %s")
        params.append(model_id)
    sql = MODELS_SQL + (f" WHERE {' AND '.join(where)}" if where else "")
    rows = fetch(conn, f"{sql} ORDER BY m.created_at DESC, m.id DESC LIMIT %s", [*params, limit])
    ids = [r["id"] for r in rows]
    tags: dict[str, list[str]] = {i: [] for i in ids}
    if ids:
        for r in fetch(conn, TAGS_SQL.format(placeholders(len(ids))), ids):
            tags[r["model_id"]].append(r["tag"])
    task_ids = sorted({r["task_id"] for r in rows if r["task_id"]})
    task_names: dict[str, str] = {}
    if task_ids:
        sql = TASK_NAMES_SQL.format(placeholders(len(task_ids)))
        task_names = {r["id"]: f"{r['path']}/{r['name']}" for r in fetch(conn, sql, task_ids)}
    out = []
    for r in rows:
        metadata = json_value(r["metadata"])
        out.append(
            {
                "id": r["id"],
                "project": r["project"],
                "name": r["name"],
                "uri": r["uri"],
                "tags": sorted(tags[r["id"]]),
                "published": bool(r["published"]),
                "task_id": r["task_id"],
                "task_name": task_names.get(r["task_id"] or ""),
                "metadata": dict(metadata) if isinstance(metadata, dict) else {},
                "created_at": json_time(r["created_at"]),
            }
        )
    return out


def show(conn: Any, model_id: str) -> Row:
    """`model show --json`: the model (`ModelInfo`'s fields), the run that registered it and
    the task that run was cloned from (`RunRef`'s), and the inputs the run resolved
    (`ModelLineage`), the record `tasks.lineage.model_lineage` builds through the ORM."""
    from orchestrator.tasks import records as task_records

    found = list_models(conn, model_id=model_id, limit=1)
    if not found:
        raise NotFound("model", model_id, "list models with: retrain model list")
    info = found[0]
    run = task_records.task(conn, info["task_id"]) if info["task_id"] else None
    template = task_records.task(conn, run["parent"]) if run and run["parent"] else None
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
