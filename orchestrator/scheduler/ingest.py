"""Applying worker reports to the store, and settling runs whose worker was lost.

The scheduler is the one writer of run state: workers report on a Redis stream
(`orchestrator.queue.reports`, the protocol) and this module applies the reports. `Ingest`
reads the stream as a member of the `scheduler` consumer group and acknowledges an entry only
after its changes committed; every rule is idempotent, so an entry applied twice (a crash
between commit and acknowledgement, a worker sending again) changes nothing.

Liveness lives in Redis alone: a running task whose heartbeat key has expired has lost its
worker (`find_lost`), and `fail_lost` puts it back on its queue or fails it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import structlog
from sqlalchemy import or_, select

from orchestrator.errors import Conflict, NotFound, ServiceUnavailable, UserError
from orchestrator.models.service import check_uri
from orchestrator.queue import reports
from orchestrator.queue.keys import (
    FENCE_TTL_S,
    HEARTBEAT_TTL_S,
    REPORTS_DEAD,
    REPORTS_DEAD_MAXLEN,
    REPORTS_GROUP,
    REPORTS_STREAM,
    fence_key,
    heartbeat_key,
)
from orchestrator.queue.streams import entries
from orchestrator.store.models import Model, Task, utcnow
from orchestrator.tasks.states import FINISHED
from orchestrator.tasks.views import execution_id

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.models.service import ModelService
    from orchestrator.store import Store
    from orchestrator.tasks.service import TaskService
    from orchestrator.tasks.views import TaskInfo

log = structlog.get_logger("retrain.ingest")

BATCH = 1000
"""Entries read (and acknowledged) per round trip."""
MAX_PER_STEP = 100_000
"""Entries one step reads at most, so a step ends even while a flood goes on."""


class Ingest:
    """Applies reports from the stream to the store as consumer `consumer` of the
    `scheduler` group. Several ingesters with different consumer names share the work."""

    def __init__(
        self,
        redis: Redis,
        tasks: TaskService,
        models: ModelService,
        consumer: str,
        *,
        secret: str | None = None,
    ) -> None:
        self.redis = redis
        self.tasks = tasks
        self.models = models
        self.consumer = consumer
        self.secret = secret
        """The worker secret: with it, only reports signed with it are applied."""
        self._group_ready = False
        self.refused_since_recorded = 0
        """Refusals not yet added to the store's count (`Scheduler.heartbeat` does)."""
        self.last_refused: tuple[dt.datetime, str] | None = None

    def step(
        self, count: int = BATCH, block_ms: int = 0, *, max_entries: int = MAX_PER_STEP
    ) -> int:
        """Apply this consumer's pending (delivered, unacknowledged) entries first, then new
        ones, `count` at a time, until the stream is drained or `max_entries` were read (a
        flood of junk is cheap to refuse, so a real report behind it waits one step at most),
        waiting up to `block_ms` when there is nothing (0: do not wait). Then trim what is
        acknowledged. Returns how many entries were applied, or dead-lettered, and
        acknowledged.

        An entry whose application fails for an outside reason (the database or Redis is
        down) stays pending, the exception propagates, and the next step applies it again.
        Any other failure dead-letters that entry alone."""
        done = self._consume("0", count, None)
        block = block_ms if block_ms > 0 and done == 0 else None
        while done < max_entries:
            read = self._consume(">", count, block)
            done += read
            block = None
            if read < count:
                break
        if done:
            self.trim()
        return done

    def _consume(self, start: str, count: int, block: int | None) -> int:
        entries = self._read(start, count, block)
        applied: list[Any] = []
        try:
            for entry_id, fields in entries:
                self.apply_entry(entry_id, fields)
                applied.append(entry_id)
        finally:
            if applied:  # one round trip per batch; a crash re-applies (idempotent)
                self.redis.xack(REPORTS_STREAM, REPORTS_GROUP, *applied)
        return len(entries)

    def trim(self) -> None:
        """Drop acknowledged entries: everything before the oldest entry still pending for
        any scheduler, or before the last one delivered when none is. Nobody else trims the
        stream, so a report is never lost before it was applied."""
        summary = cast(Any, self.redis.xpending(REPORTS_STREAM, REPORTS_GROUP))
        oldest = summary.get("min") if summary and summary.get("pending") else None
        if oldest is None:
            groups = cast(Any, self.redis.xinfo_groups(REPORTS_STREAM))
            oldest = next(
                (g["last-delivered-id"] for g in groups if _text(g["name"]) == REPORTS_GROUP),
                None,
            )
        if oldest is not None:
            self.redis.xtrim(REPORTS_STREAM, minid=oldest, approximate=False)

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
        return entries(reply)

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
        """Apply one stream entry. One that can never be applied (malformed, oversized, out of
        range, or crashing a rule) is dead-lettered and returns normally; an outage raises."""
        ident = _text(entry_id)
        try:
            report = reports.parse(fields, self.secret)
            self.apply(report)
        except (reports.BadReport, UserError) as exc:
            self._dead_letter(ident, fields, str(exc))
        except Exception as exc:
            if _is_outage(exc):
                raise
            log.exception("report crashed a rule; dead-lettered", entry=ident)
            self._dead_letter(ident, fields, f"crashed: {type(exc).__name__}: {str(exc)[:300]}")

    def _dead_letter(self, ident: str, fields: Mapping[Any, Any] | None, reason: str) -> None:
        log.warning("report refused", entry=ident, reason=reason)
        # For the store (the daemon's heartbeat adds them there): Redis access alone must not
        # be able to hide a refusal from `retrain status`.
        self.refused_since_recorded += 1
        self.last_refused = (utcnow(), reason[:1000])
        raw = (fields or {}).get(reports.FIELD, (fields or {}).get(reports.FIELD.encode(), b""))
        data = raw if isinstance(raw, (bytes, str)) else repr(raw)
        self.redis.xadd(
            REPORTS_DEAD,
            {"entry": ident, "reason": reason[:1000], "data": data[:4096]},
            maxlen=REPORTS_DEAD_MAXLEN,
            approximate=True,
        )

    def apply(self, report: Mapping[str, Any]) -> None:
        """Apply one parsed report to the store (idempotent). A report is bound: it names its
        task's attempt, and the first `started` of an attempt binds it to its worker; a report
        from another worker, for another attempt, or that does not fit the task's state
        (finishing a task nobody started) is refused (`BadReport`, dead-lettered)."""
        kind = report["kind"]
        task_id = report["task_id"]
        if kind == "heartbeat":
            return
        info = self._info(task_id)
        status = info.status
        worker = str(report.get("worker") or "unknown")
        attempt = int(report.get("attempt") or 0)
        if attempt != info.attempt:
            raise reports.BadReport(
                f"{kind} report for {task_id}: attempt {attempt}, but the task is on attempt "
                f"{info.attempt} (a stale or forged report)"
            )
        execution = report.get("execution")
        if execution is not None and str(execution) != execution_id(info.queued_at):
            raise reports.BadReport(
                f"{kind} report for {task_id}: from an earlier execution of attempt {attempt} "
                "(the run was queued again since; a stale or replayed report)"
            )
        if kind == "started":
            if status == "queued":
                self._start(task_id, worker)
            elif info.worker not in (None, worker):
                raise reports.BadReport(
                    f"started report for {task_id}: attempt {attempt} is bound to worker "
                    f"{info.worker}, not {worker}"
                )
            return
        # A run that ended before its `started` arrived (aborted while queued) has no worker
        # bound; its own worker's final facts still belong on its record.
        unbound_ok = status in FINISHED and info.worker is None
        if info.worker != worker and not unbound_ok:
            holder = info.worker or "none (nobody started it)"
            raise reports.BadReport(
                f"{kind} report for {task_id} from worker {worker}: attempt {attempt} is "
                f"bound to {holder}"
            )
        if kind == "released":
            if status == "running":
                with contextlib.suppress(Conflict):
                    reason = str(report.get("reason") or "its worker stopped")
                    self.tasks.requeue(task_id, f"re-queued: {reason}", attempt=False)
            return
        # finished
        if status in FINISHED and (status == "completed" or info.duration_s is not None):
            # Only a final report completes a run or gives it its duration: this one's was
            # applied. Another (a replayed payload that ran again, a replayed report) would
            # register its models as new versions of a run that ended.
            raise reports.BadReport(
                f"finished report for {task_id}: the run already ended ({status}) and its "
                "final report was applied (a repeated or replayed report)"
            )
        final = str(report["status"])
        environment = reports.clean_environment(report.get("environment"))
        artifacts = reports.clean_artifacts(report.get("artifacts"))
        duration_s = reports.clean_duration(report.get("duration_s"))
        exit_code = reports.clean_exit_code(report.get("exit_code"))
        series = reports.clean_series(report.get("series"))
        logged_params = reports.clean_logged_params(report.get("logged_params"))
        if status == "running":
            # Conflict: finished (or aborted) meanwhile by someone else.
            with contextlib.suppress(Conflict):
                self.tasks.finish(
                    task_id,
                    final,
                    exit_code=exit_code,
                    error=reports.error_summary(report.get("error"), report.get("reason")),
                    metrics=reports.numeric_metrics(report.get("metrics")),
                    environment=environment,
                    artifacts=artifacts,
                    duration_s=duration_s,
                    series=series,
                    logged_params=logged_params,
                )
        elif status in FINISHED:
            # Ended by the store first (aborted while running, or lost): the run's own facts
            # still belong on its record.
            self.tasks.keep_final_facts(
                task_id,
                final,
                exit_code=exit_code,
                environment=environment,
                artifacts=artifacts,
                duration_s=duration_s,
                series=series,
                logged_params=logged_params,
            )
        if final == "completed":  # a failed or aborted run's files are not models
            self._register_models(task_id, report.get("models"))

    def _info(self, task_id: str) -> TaskInfo:
        try:
            return self.tasks.get(task_id)
        except NotFound:
            raise reports.BadReport(f"no task {task_id!r}") from None

    def _start(self, task_id: str, worker: str) -> None:
        # Conflict: started by another report meanwhile, or aborted, or a draft: nothing to do.
        with contextlib.suppress(Conflict):
            self.tasks.start(task_id, worker)

    def _register_models(self, task_id: str, models: Any) -> None:
        if not models:
            return
        if not isinstance(models, list):
            raise reports.BadReport(f"finished report for {task_id}: models is not a list")
        store = self.tasks.store
        with store.reader() as session:
            row = session.get(Task, task_id)
            if row is None:
                raise reports.BadReport(f"no task {task_id!r}")
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_outage(exc: BaseException) -> bool:
    """A service being away (retry the entry later), as opposed to an entry that can never
    be applied (dead-letter it)."""
    import redis as redis_lib
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    outages = (ServiceUnavailable, redis_lib.RedisError, OperationalError, InterfaceError,
               DisconnectionError, ConnectionError, TimeoutError)
    return isinstance(exc, outages)


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
    reports, so a finished report waiting in the stream wins over this verdict.

    One task that cannot be settled (a service gone mid-way, a row it cannot read) is logged
    with its error and left running, for the next pass to try again; it never stops the
    others. A service that is down for all of them ends the pass."""
    settled = []
    for task_id in find_lost(redis, tasks.store, now=now, ttl_s=ttl_s):
        if redis.exists(heartbeat_key(task_id)):
            continue  # it beat just now
        try:
            if _settle_lost(redis, tasks, task_id, ttl_s):
                settled.append(task_id)
        except ServiceUnavailable:
            raise
        except Exception as exc:
            # A bug or a bad row: say which task, with the traceback, and go on.
            log.error(
                "worker lost; the task could not be settled",
                task=task_id,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
            )
    return settled


def _settle_lost(redis: Redis, tasks: TaskService, task_id: str, ttl_s: int) -> bool:
    """Re-queue or fail one lost task; False when it finished meanwhile. Either way the fence
    (`keys.fence_key`) then names the attempt that may run (`-`: none), so a worker that was
    only paused stops its job when it wakes."""
    why = f"worker lost: no heartbeat for {ttl_s} s"
    try:
        info = tasks.get(task_id)
        allowed = int(info.spec.get("retries") or 0)
        if info.attempt < allowed:
            redis.set(fence_key(task_id), str(info.attempt + 1), ex=FENCE_TTL_S)
            tasks.requeue(task_id, f"{why}; retry {info.attempt + 1} of {allowed}", attempt=True)
            log.warning("worker lost; task re-queued", task=task_id, retry=info.attempt + 1)
        else:
            tasks.finish(task_id, "failed", error=why)
            redis.set(fence_key(task_id), "-", ex=FENCE_TTL_S)
            log.warning("worker lost", task=task_id)
    except (Conflict, NotFound):
        return False  # finished meanwhile
    return True

