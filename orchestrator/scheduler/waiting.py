"""Firings that could not start and wait (`error` decisions in the ledger), per trigger, for
`retrain status`. Driver-only SQL through `orchestrator.store.lean`: status must not import
SQLAlchemy. The scheduler decides them again when the triggers file or a template changes,
or `retrain triggers replay` does (`orchestrator.scheduler.engine`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from orchestrator.store.lean import Row, fetch

ERROR = "error"
"""`orchestrator.scheduler.engine.ERROR`, not imported: that module loads SQLAlchemy."""

EVENTS_SHOWN = 20
"""How many waiting events `status` lists per trigger (all are counted)."""


def waiting_firings(conn: Any, events_shown: int = EVENTS_SHOWN) -> list[Row]:
    """One row per trigger with firings waiting: `trigger`, `reason` (the newest attempt's),
    `since` (ISO time of the oldest attempt), `count`, and `events` (oldest first, at most
    `events_shown`): [{`seq`, `kind`, `entity`, `project`, `name`, `version`}]."""
    rows = fetch(
        conn,
        "SELECT f.trigger_name, f.reason, f.created_at, f.event_seq, f.entity_id, e.kind, "
        "e.project, e.name, e.payload FROM trigger_firings f "
        "JOIN events e ON e.seq = f.event_seq WHERE f.decision = %s "
        "ORDER BY f.trigger_name, f.event_seq",
        [ERROR],
    )
    out: dict[str, Row] = {}
    for r in rows:
        group = out.setdefault(
            r["trigger_name"],
            {"trigger": r["trigger_name"], "reason": "", "since": None, "count": 0, "events": []},
        )
        when = _iso(r["created_at"])
        if group["since"] is None or (when is not None and when < group["since"]):
            group["since"] = when
        if when is not None and when >= (group.get("_latest") or ""):
            group["_latest"], group["reason"] = when, r["reason"] or ""
        group["count"] += 1
        if len(group["events"]) < events_shown:
            payload = r["payload"]
            if isinstance(payload, str):
                payload = json.loads(payload)
            group["events"].append(
                {
                    "seq": int(r["event_seq"]),
                    "kind": r["kind"],
                    "entity": r["entity_id"],
                    "project": r["project"],
                    "name": r["name"],
                    "version": (payload or {}).get("version"),
                }
            )
    for group in out.values():
        group.pop("_latest", None)
    return list(out.values())


def _iso(value: Any) -> str | None:
    """ISO 8601 UTC from a driver's value (SQLite gives text, PostgreSQL a datetime)."""
    if value is None:
        return None
    when = (
        value
        if isinstance(value, dt.datetime)
        else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat()
