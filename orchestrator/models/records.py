"""Registered models as plain JSON-ready records, listed with SQL on a bare driver connection:
the one data path of `retrain model list`, whether the connection comes from
`orchestrator.store.lean` (no SQLAlchemy, no pydantic imported) or from under a SQLAlchemy
session (`ModelService.list`, which wraps the records in `ModelInfo`).

A record has `ModelInfo`'s fields, in its order, with times as pydantic writes them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from orchestrator.datasets.validate import check_tags
from orchestrator.errors import NotFound, UserError
from orchestrator.store import eventlog
from orchestrator.store.lean import (
    Row,
    add_tags,
    execute,
    fetch,
    is_sqlite,
    json_time,
    json_value,
    placeholders,
    remove_tags,
)

MODELS_SQL = (
    "SELECT m.id, p.path AS project, m.name, m.uri, m.published, m.task_id, m.metadata, "
    "m.created_at FROM models m JOIN projects p ON p.id = m.project_id"
)
PROJECTS_SQL = "SELECT id, path FROM projects"
NAMES_SQL = "SELECT DISTINCT name FROM models"
TAGGED_SQL = "SELECT model_id FROM model_tags WHERE tag = %s"
TAGS_SQL = "SELECT model_id, tag FROM model_tags WHERE model_id IN ({})"
LOCK_SQL = "SELECT id FROM models WHERE id = %s FOR UPDATE"
INSERT_TAG_SQL = "INSERT INTO model_tags (model_id, tag) VALUES (%s, %s)"
DELETE_TAG_SQL = "DELETE FROM model_tags WHERE model_id = %s AND tag = %s"
PUBLISH_SQL = "UPDATE models SET published = %s WHERE id = %s"
RESOLVED_INPUTS_SQL = "SELECT resolved_inputs FROM tasks WHERE id = %s"
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


def load(conn: Any, model_id: str, *, for_update: bool = False) -> Row:
    """The model's record (`ModelInfo`'s fields), or `NotFound`. `for_update` locks its row
    on PostgreSQL (SQLite's writer holds the whole database from `BEGIN IMMEDIATE`)."""
    if for_update and not is_sqlite(conn):
        fetch(conn, LOCK_SQL, [model_id])
    found = list_models(conn, model_id=model_id, limit=1)
    if not found:
        raise NotFound("model", model_id, "list models with: retrain model list")
    return found[0]


# -- changes, in the open write transaction of `conn`; each returns the record and whether it
# wrote an event (its commit then wakes the scheduler) ------------------------------------


def tag(conn: Any, model_id: str, tags: Iterable[str]) -> tuple[Row, bool]:
    """Add tags; an event only when at least one is new (tags already there stay)."""
    wanted = check_tags(tags)
    record = load(conn, model_id, for_update=True)
    added = add_tags(conn, record, wanted, INSERT_TAG_SQL)
    if not added:
        return record, False
    _event(conn, eventlog.MODEL_TAGGED, record, added=added)
    return record, True


def untag(conn: Any, model_id: str, tags: Iterable[str]) -> tuple[Row, bool]:
    """Remove tags (no event); naming a tag the model lacks is an error (likely a typo)."""
    record = load(conn, model_id, for_update=True)
    remove_tags(conn, record, tags, DELETE_TAG_SQL, f"model {model_id}")
    return record, False


def publish(conn: Any, model_id: str) -> tuple[Row, bool]:
    """Mark a model published; publishing it again changes nothing and writes no event."""
    record = load(conn, model_id, for_update=True)
    if record["published"]:
        return record, False
    execute(conn, PUBLISH_SQL, [True, record["id"]])
    record["published"] = True
    _event(conn, eventlog.MODEL_PUBLISHED, record)
    return record, True


def event_payload(conn: Any, record: Row, **extra: Any) -> dict[str, Any]:
    """A model event's payload: where the model is, and the dataset versions its task was
    trained on (`inputs`: name -> version id), which triggers on models filter by."""
    inputs: dict[str, str] = {}
    if record["task_id"]:
        rows = fetch(conn, RESOLVED_INPUTS_SQL, [record["task_id"]])
        resolved = json_value(rows[0]["resolved_inputs"]) if rows else None
        if isinstance(resolved, dict):
            inputs = {k: str(v.get("version_id", "")) for k, v in resolved.items()}
    return {
        "project": record["project"],
        "name": record["name"],
        "uri": record["uri"],
        "task_id": record["task_id"],
        "published": record["published"],
        "inputs": inputs,
        **extra,
    }


def _event(conn: Any, kind: str, record: Row, **extra: Any) -> None:
    eventlog.record_event(
        conn,
        kind,
        entity_id=record["id"],
        project=record["project"],
        name=record["name"],
        tags=record["tags"],
        payload=event_payload(conn, record, **extra),
    )
