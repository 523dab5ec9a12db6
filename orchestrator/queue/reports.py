"""Worker reports: workers never touch the database; they report on a Redis stream and the
scheduler applies the reports to the store.

A report is one JSON object in the stream field `data` (never pickle)::

    {"kind": "started" | "heartbeat" | "finished" | "released", "task_id": ...,
     "worker": ..., "time": "2024-05-01T12:00:00+00:00", ...}

`released` comes from a worker that stopped the task before it ended (the worker was told to
stop with `--abort-on-stop`, or stopped twice): the task goes back to its queue, `reason`
says why.

A finished report adds `status` (completed, failed or aborted), `exit_code`, `error` (a
summary, maybe with the last log lines), `duration_s`, `metrics` (name -> number), `models`
([{"name", "uri", "metadata"}]), `artifacts` ([{"path", "uri"}]) and optionally `reason`
("timeout", "worker lost", ...).

Liveness lives in Redis alone: `started` and `heartbeat` reports also set the task's
heartbeat key with a TTL. A running task whose key has expired has lost its worker
(`find_lost`, `fail_lost`).

`Ingest` reads the stream as a member of the `scheduler` consumer group and acknowledges an
entry only after its changes committed; every rule is idempotent, so an entry applied twice
(a crash between commit and acknowledgement, a worker sending again) changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import structlog
from sqlalchemy import or_, select

from orchestrator.errors import Conflict, NotFound, UserError
from orchestrator.models.service import check_uri
from orchestrator.queue.keys import HEARTBEAT_TTL_S, REPORTS_GROUP, REPORTS_STREAM, heartbeat_key
from orchestrator.store.models import Model, Task, utcnow
from orchestrator.tasks.states import FINISHED

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.models.service import ModelService
    from orchestrator.store import Store
    from orchestrator.tasks.service import TaskService

log = structlog.get_logger("retrain.reports")

KINDS = ("started", "heartbeat", "finished", "released")
STREAM_MAXLEN = 100_000
"""Approximate cap on the stream (`XADD MAXLEN ~`): old, long-acknowledged reports go."""
FIELD = "data"


class BadReport(ValueError):
    """A report that can never be applied (malformed, unknown task, impossible change): it
    is logged and acknowledged so it does not block the stream."""


# -- sending (workers) ---------------------------------------------------------------------


def now_iso() -> str:
    return utcnow().isoformat()


def started(task_id: str, worker: str) -> dict[str, Any]:
    return {"kind": "started", "task_id": task_id, "worker": worker, "time": now_iso()}


def heartbeat(task_id: str, worker: str) -> dict[str, Any]:
    return {"kind": "heartbeat", "task_id": task_id, "worker": worker, "time": now_iso()}


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
    reason: str | None = None,
) -> dict[str, Any]:
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


# -- applying (scheduler) ------------------------------------------------------------------


class Ingest:
    """Applies reports from the stream to the store as consumer `consumer` of the
    `scheduler` group. Several ingesters with different consumer names share the work."""

    def __init__(
        self, redis: Redis, tasks: TaskService, models: ModelService, consumer: str
    ) -> None:
        self.redis = redis
        self.tasks = tasks
        self.models = models
        self.consumer = consumer
        self._group_ready = False

    def step(self, count: int = 100, block_ms: int = 0) -> int:
        """Apply this consumer's pending (delivered, unacknowledged) entries first, then up
        to `count` new ones, waiting up to `block_ms` for them (0: do not wait). Returns how
        many entries were applied (or skipped as poison) and acknowledged.

        An entry whose application fails for an outside reason (the database is down)
        stays pending, the exception propagates, and the next step applies it again."""
        done = self._consume("0", count, None)
        block = block_ms if block_ms > 0 and done == 0 else None
        return done + self._consume(">", count, block)

    def _consume(self, start: str, count: int, block: int | None) -> int:
        entries = self._read(start, count, block)
        for entry_id, fields in entries:
            self.apply_entry(entry_id, fields)
            self.redis.xack(REPORTS_STREAM, REPORTS_GROUP, entry_id)
        return len(entries)

    def _read(self, start: str, count: int, block: int | None) -> list[tuple[Any, Any]]:
        import redis as redis_lib

        self._ensure_group()
        try:
            reply = self.redis.xreadgroup(
                REPORTS_GROUP, self.consumer, {REPORTS_STREAM: start}, count=count, block=block
            )
        except redis_lib.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group went away (flushed); make it again and read once more.
            self._group_ready = False
            self._ensure_group()
            reply = self.redis.xreadgroup(
                REPORTS_GROUP, self.consumer, {REPORTS_STREAM: start}, count=count, block=block
            )
        if not reply:
            return []
        raw = cast(Any, reply)
        if isinstance(raw, dict):  # RESP3
            return [(e[0], e[1]) for batch in raw.values() for e in batch[0]]
        return [(e[0], e[1]) for _stream, batch in raw for e in batch]

    def _ensure_group(self) -> None:
        import redis as redis_lib

        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(REPORTS_STREAM, REPORTS_GROUP, id="0", mkstream=True)
        except redis_lib.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def apply_entry(self, entry_id: Any, fields: Mapping[Any, Any] | None) -> None:
        """Apply one stream entry; a poison entry is logged and returns normally."""
        ident = _text(entry_id)
        try:
            report = parse(fields)
            self.apply(report)
        except (BadReport, UserError) as exc:
            log.warning("report skipped", entry=ident, error=str(exc))

    def apply(self, report: Mapping[str, Any]) -> None:
        """Apply one parsed report to the store (idempotent)."""
        kind = report["kind"]
        task_id = report["task_id"]
        if kind == "heartbeat":
            return
        status = self._status(task_id)
        worker = str(report.get("worker") or "unknown")
        if kind == "started":
            if status == "queued":
                self._start(task_id, worker)
            return
        if kind == "released":
            if status == "running":
                with contextlib.suppress(Conflict):
                    reason = str(report.get("reason") or "its worker stopped")
                    self.tasks.requeue(task_id, f"re-queued: {reason}", attempt=False)
            return
        # finished
        final = report.get("status")
        if final not in FINISHED:
            raise BadReport(f"finished report for {task_id}: status {final!r} is not final")
        if status == "queued":
            self._start(task_id, worker)
            status = self._status(task_id)
        if status == "running":
            # Conflict: finished (or aborted) meanwhile by someone else.
            with contextlib.suppress(Conflict):
                self.tasks.finish(
                    task_id,
                    final,
                    exit_code=_exit_code(report.get("exit_code")),
                    error=_error(report.get("error"), report.get("reason")),
                    metrics=numeric_metrics(report.get("metrics")),
                    environment=report.get("environment")
                    if isinstance(report.get("environment"), dict)
                    else None,
                    artifacts=_artifacts(report.get("artifacts")),
                    duration_s=_duration(report.get("duration_s")),
                )
        self._register_models(task_id, report.get("models"))

    def _status(self, task_id: str) -> str:
        try:
            return self.tasks.get(task_id).status
        except NotFound:
            raise BadReport(f"no task {task_id!r}") from None

    def _start(self, task_id: str, worker: str) -> None:
        # Conflict: started by another report meanwhile, or aborted, or a draft: nothing to do.
        with contextlib.suppress(Conflict):
            self.tasks.start(task_id, worker)

    def _register_models(self, task_id: str, models: Any) -> None:
        if not models:
            return
        if not isinstance(models, list):
            raise BadReport(f"finished report for {task_id}: models is not a list")
        store = self.tasks.store
        with store.reader() as session:
            row = session.get(Task, task_id)
            if row is None:
                raise BadReport(f"no task {task_id!r}")
            project = row.project.path
            existing = {
                (name, uri)
                for name, uri in session.execute(
                    select(Model.name, Model.uri).where(Model.task_id == task_id)
                )
            }
        for model in models:
            if not isinstance(model, dict) or not model.get("name") or not model.get("uri"):
                log.warning("model skipped: needs a name and a uri", task=task_id, model=model)
                continue
            try:
                uri = check_uri(str(model["uri"]))
                name = str(model["name"])
                if (name, uri) in existing:
                    continue
                metadata = model.get("metadata")
                self.models.register(
                    project,
                    name,
                    uri,
                    task_id=task_id,
                    metadata=metadata if isinstance(metadata, dict) else None,
                )
                existing.add((name, uri))
            except UserError as exc:
                log.warning("model skipped", task=task_id, model=model.get("name"), error=str(exc))


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


def _artifacts(value: Any) -> list[dict[str, str]]:
    """The well-formed entries among reported artifacts ({path, uri} strings)."""
    if not isinstance(value, list):
        return []
    return [
        {"path": a["path"], "uri": a["uri"]}
        for a in value
        if isinstance(a, dict) and isinstance(a.get("path"), str) and isinstance(a.get("uri"), str)
    ]


def _duration(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def _exit_code(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _error(error: Any, reason: Any) -> str | None:
    text = str(error) if error else ""
    why = str(reason) if reason else ""
    if why and why not in text:
        return f"{why}: {text}" if text else why
    return text or None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- lost workers --------------------------------------------------------------------------


def find_lost(
    redis: Redis,
    store: Store,
    *,
    now: dt.datetime | None = None,
    ttl_s: int = HEARTBEAT_TTL_S,
) -> list[str]:
    """Running tasks whose heartbeat key is gone and that started more than `ttl_s` ago
    (so a worker had time to beat at least once). A job that keeps beating is never lost."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=ttl_s)
    with store.reader() as session:
        ids = list(
            session.scalars(
                select(Task.id).where(
                    Task.status == "running",
                    or_(Task.started_at.is_(None), Task.started_at < cutoff),
                )
            )
        )
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.exists(heartbeat_key(task_id))
    alive = pipe.execute()
    return [task_id for task_id, beat in zip(ids, alive, strict=True) if not beat]


def fail_lost(
    redis: Redis,
    tasks: TaskService,
    *,
    now: dt.datetime | None = None,
    ttl_s: int = HEARTBEAT_TTL_S,
) -> list[str]:
    """Settle every lost task: back on its queue while it has retries left (spec `retries`),
    else `failed` ("worker lost"). Returns their ids. Run it after applying the pending
    reports, so a finished report waiting in the stream wins over this verdict."""
    settled = []
    for task_id in find_lost(redis, tasks.store, now=now, ttl_s=ttl_s):
        if redis.exists(heartbeat_key(task_id)):
            continue  # it beat just now
        why = f"worker lost: no heartbeat for {ttl_s} s"
        try:
            info = tasks.get(task_id)
            allowed = int(info.spec.get("retries") or 0)
            if info.attempt < allowed:
                tasks.requeue(
                    task_id, f"{why}; retry {info.attempt + 1} of {allowed}", attempt=True
                )
                log.warning("worker lost; task re-queued", task=task_id, retry=info.attempt + 1)
            else:
                tasks.finish(task_id, "failed", error=why)
                log.warning("worker lost", task=task_id)
        except (Conflict, NotFound):
            continue  # finished meanwhile
        settled.append(task_id)
    return settled
