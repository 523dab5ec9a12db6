"""`retrain history`: trigger decisions, newest first, as one query that runs on the bare
driver (`orchestrator.store.lean`) or on the connection under a SQLAlchemy session alike, so
the command answers without importing SQLAlchemy and both paths return the same rows."""

from __future__ import annotations

from typing import Any

from orchestrator.store.lean import Row, fetch, json_time, json_value

SQL = (
    "SELECT f.created_at, f.trigger_name, f.event_seq, f.decision, f.reason, f.task_id, "
    "f.entity_id, "
    "e.kind, e.project, e.name, e.payload "
    "FROM trigger_firings f JOIN events e ON e.seq = f.event_seq"
)


def history(conn: Any, *, trigger: str | None = None, limit: int = 50) -> list[Row]:
    """The newest `limit` decisions (of `trigger`, when given), JSON-ready."""
    params: list[Any]
    where, params = "", [limit]
    if trigger:
        where, params = " WHERE f.trigger_name = %s", [trigger, limit]
    rows = fetch(conn, f"{SQL}{where} ORDER BY f.id DESC LIMIT %s", params)
    out = []
    for r in rows:
        payload = json_value(r["payload"])
        out.append(
            {
                "time": json_time(r["created_at"]),
                "trigger": r["trigger_name"],
                "event": int(r["event_seq"]),
                "kind": r["kind"],
                "entity": f"{r['project']}/{r['name']}",
                "entity_kind": str(r["kind"]).split(".", 1)[0],
                "entity_id": r["entity_id"],
                "version": payload.get("version") if isinstance(payload, dict) else None,
                "decision": r["decision"],
                "reason": r["reason"],
                "task": r["task_id"],
            }
        )
    return out
