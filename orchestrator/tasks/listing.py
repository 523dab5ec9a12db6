"""`retrain task list` and a template's overview in `task show`: queries shared by the fast
driver-only path and the full store."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import NotFound
from orchestrator.store.lean import Row, fetch, json_time, placeholders

FROM = "tasks t JOIN projects p ON p.id = t.project_id"
SUMMARY_COLUMNS = (
    "t.id, p.path AS project, t.name, t.type, t.status, t.queue, t.priority, t.parent_id, "
    "t.trigger_name, t.created_at, t.queued_at, t.started_at, t.finished_at, t.worker, "
    "t.exit_code, t.kind, t.revision, t.template_id, "
    "t.trigger_event_seq, t.trigger_entity_kind, t.trigger_entity_id, "
    "t.parameters, t.inputs, t.resolved_inputs"
)
KINDS = ("run", "template")
JSON_COLUMNS = ("parameters", "inputs", "resolved_inputs")


def list_tasks(
    conn: Any,
    *,
    project: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    kind: str = "run",
    dataset: str | None = None,
    parent: str | None = None,
    limit: int = 50,
) -> list[Row]:
    """Newest runs (or templates, with `kind="template"`) first, as plain dicts (JSON-ready):
    the summary `task list` prints, with parameters, inputs and the trigger's entity.
    `dataset`: the runs that took that version as an input or were fired by an event about
    it; `parent`: the runs cloned from a task (a template revision, or a run re-run)."""
    where: list[str] = ["t.kind = %s"]
    params: list[Any] = [kind]
    if dataset is not None:
        if not fetch(conn, "SELECT id FROM dataset_versions WHERE id = %s", [dataset]):
            raise NotFound("dataset version", dataset, "list versions with: retrain dataset search")
        # A union of two index lookups (an OR across tables would scan every task).
        where.append(
            "t.id IN (SELECT task_id FROM task_inputs WHERE version_id = %s"
            " UNION SELECT id FROM tasks WHERE trigger_entity_id = %s)"
        )
        params += [dataset, dataset]
    if parent is not None:
        where.append("(t.template_id = %s OR t.parent_id = %s)")
        params += [parent, parent]
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
    condition = f" WHERE {' AND '.join(where)}"
    sql = f"SELECT {SUMMARY_COLUMNS} FROM {FROM}{condition} ORDER BY t.created_at DESC LIMIT %s"  # noqa: S608
    return _with_tags(conn, fetch(conn, sql, [*params, limit]))


def template_overview(conn: Any, project: str, name: str, *, runs: int = 10) -> Row:
    """A template's revisions, newest first, and the newest `runs` runs of any of them."""
    revisions = _with_tags(
        conn,
        fetch(
            conn,
            f"SELECT {SUMMARY_COLUMNS} FROM {FROM} WHERE t.kind = 'template' "  # noqa: S608
            "AND p.path = %s AND t.name = %s ORDER BY t.revision DESC",
            [project, name],
        ),
    )
    latest: list[Row] = []
    if revisions:
        ids = [r["id"] for r in revisions]
        latest = _with_tags(
            conn,
            fetch(
                conn,
                f"SELECT {SUMMARY_COLUMNS} FROM {FROM} WHERE t.template_id IN "  # noqa: S608
                f"({placeholders(len(ids))}) ORDER BY t.created_at DESC LIMIT %s",
                [*ids, runs],
            ),
        )
        number = {r["id"]: r["revision"] for r in revisions}
        for run in latest:
            run["template_revision"] = number.get(run["template"])
    return {"revisions": revisions, "runs": latest}


def _with_tags(conn: Any, rows: list[Row]) -> list[Row]:
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
    out["template"] = out.pop("template_id")
    out["trigger_event"] = out.pop("trigger_event_seq")
    kind, entity = out.pop("trigger_entity_kind"), out.pop("trigger_entity_id")
    out["trigger_entity"] = {"kind": kind or "", "id": entity} if entity else None
    for key in JSON_COLUMNS:
        # PostgreSQL's driver decodes jsonb; SQLite keeps JSON as text.
        value = out[key]
        out[key] = json.loads(value) if isinstance(value, str) else (value or {})
    out["tags"] = tags
    for key in ("created_at", "queued_at", "started_at", "finished_at"):
        out[key] = json_time(out[key])  # as every command's JSON writes a time
    return out


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("**", "*").replace("*", "%").replace("?", "_")
