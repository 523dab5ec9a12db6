"""`retrain task list`: one query, shared by the fast driver-only path and the full store."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator.store.lean import Row, fetch, placeholders

FROM = "tasks t JOIN projects p ON p.id = t.project_id"
SUMMARY_COLUMNS = (
    "t.id, p.path AS project, t.name, t.type, t.status, t.queue, t.priority, t.parent_id, "
    "t.trigger_name, t.created_at, t.queued_at, t.started_at, t.finished_at, t.worker, "
    "t.exit_code"
)


def list_tasks(
    conn: Any,
    *,
    project: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    limit: int = 50,
) -> list[Row]:
    """Newest tasks first, as plain dicts (JSON-ready): the summary `task list` prints."""
    where, params = [], []
    if project:
        where.append("p.path LIKE %s ESCAPE '\\'")
        params.append(_like(project))
    if status:
        where.append("t.status = %s")
        params.append(status)
    if tag:
        where.append("t.id IN (SELECT task_id FROM task_tags WHERE tag = %s)")
        params.append(tag)
    # Only constant fragments are joined into the SQL; every value is a bound parameter.
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT {SUMMARY_COLUMNS} FROM {FROM}{condition} ORDER BY t.created_at DESC LIMIT %s"  # noqa: S608
    rows = fetch(conn, sql, [*params, limit])
    tags: dict[str, list[str]] = {}
    if rows:
        ids = [r["id"] for r in rows]
        tag_sql = f"SELECT task_id, tag FROM task_tags WHERE task_id IN ({placeholders(len(ids))})"  # noqa: S608
        for r in fetch(conn, tag_sql + " ORDER BY tag", ids):
            tags.setdefault(r["task_id"], []).append(r["tag"])
    return [_summary(r, tags.get(r["id"], [])) for r in rows]


def queue_names(conn: Any) -> list[str]:
    return [r["queue"] for r in fetch(conn, "SELECT DISTINCT queue FROM tasks ORDER BY queue", ())]


def _summary(row: Row, tags: list[str]) -> Row:
    out = dict(row)
    out["parent"] = out.pop("parent_id")
    out["trigger"] = out.pop("trigger_name")
    out["tags"] = tags
    for key in ("created_at", "queued_at", "started_at", "finished_at"):
        out[key] = _iso(out[key])
    return out


def _iso(value: Any) -> str | None:
    """Timestamps as ISO 8601 UTC strings, from PostgreSQL datetimes or SQLite's text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return str(value.astimezone(dt.timezone.utc).isoformat())


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("**", "*").replace("*", "%").replace("?", "_")
