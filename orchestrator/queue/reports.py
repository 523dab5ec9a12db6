"""The report protocol: what workers tell the scheduler, on a Redis stream.

Workers never touch the database; they build reports here, send them with `send`, and the
scheduler (`orchestrator.scheduler.ingest`) parses them with `parse` and applies them to the
store. This module is the whole protocol, and it imports nothing of the store: every worker
process loads it.

A report is one JSON object in the stream field `data` (never pickle)::

    {"kind": "started" | "heartbeat" | "finished" | "released", "task_id": ...,
     "worker": ..., "time": "2024-05-01T12:00:00+00:00", ...}

`released` comes from a worker that stopped the task before it ended (the worker was told to
stop with `--abort-on-stop`, or stopped twice): the task goes back to its queue, `reason`
says why.

A finished report adds `status` (completed, failed or aborted), `exit_code`, `error` (a
summary, maybe with the last log lines), `duration_s`, `metrics` (name -> number), `models`
([{"name", "uri", "metadata"}]), `artifacts` ([{"path", "uri"}]), `environment` (what the run
ran in) and optionally `reason` ("timeout", "worker lost", ...). The `clean_*` functions are
how the receiving side reads these fields: whatever a worker sent, they return well-formed
values or nothing.

Liveness lives in Redis alone: `started` and `heartbeat` reports also set the task's
heartbeat key with a TTL. A running task whose key has expired has lost its worker.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.queue.keys import HEARTBEAT_TTL_S, REPORTS_STREAM, heartbeat_key
from orchestrator.tasks.states import FINISHED as FINAL_STATUSES

if TYPE_CHECKING:
    from redis import Redis

KINDS = ("started", "heartbeat", "finished", "released")
STREAM_MAXLEN = 100_000
"""Approximate cap on the stream (`XADD MAXLEN ~`): old, long-acknowledged reports go."""
FIELD = "data"


class BadReport(ValueError):
    """A report that can never be applied (malformed, unknown task, impossible change): it
    is logged and acknowledged so it does not block the stream."""


# -- building and sending (workers) --------------------------------------------------------


def now_iso() -> str:
    """The time a report carries: UTC, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


def started(task_id: str, worker: str) -> dict[str, Any]:
    """The worker began the task."""
    return {"kind": "started", "task_id": task_id, "worker": worker, "time": now_iso()}


def heartbeat(task_id: str, worker: str) -> dict[str, Any]:
    """The task's worker is alive (refreshes the heartbeat key when sent)."""
    return {"kind": "heartbeat", "task_id": task_id, "worker": worker, "time": now_iso()}


def released(task_id: str, worker: str, reason: str) -> dict[str, Any]:
    """The worker stopped the task before it ended; it goes back to its queue."""
    return {
        "kind": "released",
        "task_id": task_id,
        "worker": worker,
        "time": now_iso(),
        "reason": reason,
    }


def finished(
    task_id: str,
    worker: str,
    status: str,
    *,
    exit_code: int | None = None,
    error: str | None = None,
    duration_s: float | None = None,
    metrics: Mapping[str, float] | None = None,
    models: Sequence[Mapping[str, Any]] = (),
    artifacts: Sequence[Mapping[str, Any]] = (),
    environment: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The task ended on its worker, with everything the run produced."""
    report: dict[str, Any] = {
        "kind": "finished",
        "task_id": task_id,
        "worker": worker,
        "time": now_iso(),
        "status": status,
        "exit_code": exit_code,
        "error": error,
        "duration_s": duration_s,
        "metrics": dict(metrics or {}),
        "models": [dict(m) for m in models],
        "artifacts": [dict(a) for a in artifacts],
    }
    if environment:
        report["environment"] = dict(environment)
    if reason:
        report["reason"] = reason
    return report


def send(
    redis: Redis, report: Mapping[str, Any], *, heartbeat_ttl_s: int = HEARTBEAT_TTL_S
) -> None:
    """Add a report to the stream; `started` and `heartbeat` also refresh the task's
    heartbeat key (the liveness signal), in the same round trip."""
    kind = report.get("kind")
    task_id = report.get("task_id")
    if kind not in KINDS:
        raise ValueError(f"report kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("a report needs a task_id")
    body = {"time": now_iso(), **report}
    data = json.dumps(body, default=str, separators=(",", ":"))
    pipe = redis.pipeline(transaction=True)
    if kind in ("started", "heartbeat"):
        pipe.set(heartbeat_key(task_id), str(body.get("worker") or ""), ex=heartbeat_ttl_s)
    pipe.xadd(REPORTS_STREAM, {FIELD: data}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.execute()


# -- parsing and validating (the scheduler) ------------------------------------------------


def parse(fields: Mapping[Any, Any] | None) -> dict[str, Any]:
    """The report in a stream entry's fields; `BadReport` when it is not a valid one."""
    if not fields:
        raise BadReport("empty entry (trimmed from the stream?)")
    raw = fields.get(FIELD, fields.get(FIELD.encode()))
    if raw is None:
        raise BadReport(f"no {FIELD!r} field")
    try:
        report = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReport(f"not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise BadReport("not a JSON object")
    if report.get("kind") not in KINDS:
        raise BadReport(f"kind {report.get('kind')!r} is not one of {', '.join(KINDS)}")
    if not isinstance(report.get("task_id"), str) or not report["task_id"]:
        raise BadReport("no task_id")
    if report["kind"] == "finished" and report.get("status") not in FINAL_STATUSES:
        raise BadReport(
            f"finished report for {report['task_id']}: status {report.get('status')!r} "
            "is not final"
        )
    return report


def numeric_metrics(metrics: Any) -> dict[str, float | int]:
    """The finite numbers among reported metrics (what triggers compare); others dropped."""
    if not isinstance(metrics, dict):
        return {}
    kept: dict[str, float | int] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        kept[str(name)] = value
    return kept


def clean_artifacts(value: Any) -> list[dict[str, str]]:
    """The well-formed entries among reported artifacts ({path, uri} strings)."""
    if not isinstance(value, list):
        return []
    return [
        {"path": a["path"], "uri": a["uri"]}
        for a in value
        if isinstance(a, dict) and isinstance(a.get("path"), str) and isinstance(a.get("uri"), str)
    ]


def clean_duration(value: Any) -> float | None:
    """A reported duration in seconds, when it is a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def clean_exit_code(value: Any) -> int | None:
    """A reported exit code, when it is an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def clean_environment(value: Any) -> dict[str, Any] | None:
    """The reported environment (key, hit, tool, build time, frozen pins), when an object."""
    return dict(value) if isinstance(value, dict) and value else None


def error_summary(error: Any, reason: Any) -> str | None:
    """The error a task records: the reported error, led by the reason when it adds one."""
    text = str(error) if error else ""
    why = str(reason) if reason else ""
    if why and why not in text:
        return f"{why}: {text}" if text else why
    return text or None
