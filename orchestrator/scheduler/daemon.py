"""`retrain scheduler`: the daemon around the firing engine.

One loop iteration (`tick`) is a list of named steps, each callable alone:
lease -> reload triggers.yaml if it changed -> poll events until caught up -> push jobs ->
release held runs -> reconcile (every 30 s) -> heartbeat. Between iterations the daemon
sleeps until the store announces new events on Redis, or the poll interval passes.
Cron and interval triggers run on APScheduler and enter the event log as `schedule.fired`
events, so they go through the same ledger as everything else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.errors import RetrainError
from orchestrator.scheduler.engine import STATE, Engine, PollResult
from orchestrator.scheduler.lease import Lease
from orchestrator.store import events as ev
from orchestrator.store.models import SchedulerState, utcnow
from orchestrator.triggers.config import Config, load_config
from orchestrator.yamlfile import FileError

if TYPE_CHECKING:
    from orchestrator.runtime import Runtime
    from orchestrator.scheduler.metrics import Metrics
    from orchestrator.tasks.views import TaskInfo

log = structlog.get_logger("retrain.scheduler")

POLL_INTERVAL_S = 5.0
RECONCILE_EVERY_S = 30.0
LEASE_TTL_S = 10.0
BATCH = 1000


@dataclass
class TickReport:
    leader: bool
    events: int = 0
    fired: int = 0
    pushed: int = 0


class Scheduler:
    def __init__(
        self,
        runtime: Runtime,
        triggers: Path,
        *,
        poll_interval: float = POLL_INTERVAL_S,
        reconcile_every: float = RECONCILE_EVERY_S,
        lease_ttl: float = LEASE_TTL_S,
        wakeup: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.path = triggers
        self.poll_interval = poll_interval
        self.reconcile_every = reconcile_every
        self.wakeup = wakeup
        """Listen for the store's announcements (off: timed polls only, as in a benchmark)."""
        self.metrics = metrics
        """Prometheus counters and gauges, when `--metrics-port` serves them."""
        from orchestrator.queue.connection import client

        self.engine = Engine(runtime.store, runtime.tasks, runtime.settings.storage_url)
        # Unchecked: the daemon starts, and keeps firing into the store, while Redis is down.
        self.redis = client(runtime.settings)
        self.lease = Lease(self.redis, lease_ttl)
        from orchestrator.scheduler.ingest import Ingest

        # Workers report on a Redis stream; the scheduler is the one writer of run state. One
        # consumer name for every scheduler: a restarted daemon re-applies what a crashed one
        # read but did not acknowledge (applying is idempotent).
        self.ingest = Ingest(self.redis, runtime.tasks, runtime.models, "scheduler")
        self.config: Config | None = None
        self._mtime: float | None = None
        self._last_reconcile = 0.0
        self._last_metrics = 0.0
        self._stop = threading.Event()
        self.woken = threading.Event()
        """Set by the Redis listener and by schedule ticks: poll now."""
        self.schedules: Any = None
        """APScheduler's BackgroundScheduler for cron and interval triggers (set by run)."""

    # -- steps -----------------------------------------------------------------------------

    def reload(self, *, force: bool = False) -> bool:
        """Load triggers.yaml if it changed. An invalid file keeps the previous triggers
        running; the error is logged and recorded for `retrain status`."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = None
        if not force and self.config is not None and mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            config = load_config(self.path, resolve_template=self._template_target)
        except (FileError, RetrainError) as exc:
            log.error(
                "triggers file is invalid; keeping the previous triggers",
                path=str(self.path),
                error=str(exc),
            )
            self._record_config_error(str(exc))
            return False
        if self.config is not None and config.digest == self.config.digest:
            return False
        self.engine.sync_triggers(config)
        self.config = config
        _return_freed_memory()
        self._schedule(config)
        log.info(
            "triggers loaded",
            path=str(self.path),
            triggers=len(config.triggers),
            digest=config.digest,
        )
        return True

    def poll(self, now: dt.datetime | None = None) -> tuple[int, int]:
        """Fire for every event past the cursor, batch after batch, pushing each batch's jobs
        once its transaction has committed. Returns (events read, tasks started)."""
        assert self.config is not None
        events = fired = 0
        while True:
            result = self.engine.poll(self.config, now=now, batch=BATCH)
            if result.conflict:
                log.info("another scheduler advanced the cursor; retrying", cursor=result.cursor)
                continue
            self._after_commit(result)
            events += result.events
            fired += len(result.jobs)
            if result.events < BATCH:
                return events, fired

    def _after_commit(self, result: PollResult) -> None:
        if self.metrics is not None:
            self.metrics.events.inc(result.events)
            self.metrics.decided(result.decisions, time.time())
        for decision in result.decisions:
            log.info(
                f"trigger {decision.decision}",
                trigger=decision.trigger,
                event_seq=decision.event,
                task=decision.task_id,
                reason=decision.reason,
            )
        for task_id in result.cancel:
            self._safely(self.runtime.queues.cancel, task_id)
        for info, job in result.replace:
            self._safely(self.runtime.queues.cancel, info.id)
            self._push(info, job)
        for info, job in result.jobs:
            self._push(info, job)

    def _push(self, info: TaskInfo, job: dict[str, Any]) -> None:
        if not self.runtime.tasks.push(info, job):
            log.warning("Redis unreachable; the task stays queued until reconcile", task=info.id)

    def release(self) -> int:
        assert self.config is not None
        jobs = self.engine.release_held(self.config)
        for info, job in jobs:
            log.info("held run released", task=info.id, trigger=info.trigger)
            self._push(info, job)
        return len(jobs)

    def reconcile(self, now_s: float | None = None, *, force: bool = False) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        if not force and now_s - self._last_reconcile < self.reconcile_every:
            return
        self._last_reconcile = now_s
        report = self._safely(self.runtime.tasks.reconcile)
        if report is not None and (report.enqueued or report.removed):
            log.info(
                "reconciled Redis with the store", enqueued=report.enqueued, removed=report.removed
            )
        self._safely(self._clean_registries)
        from orchestrator.scheduler.ingest import fail_lost

        lost = self._safely(self._fail_lost, fail_lost)
        if lost:
            log.warning("worker lost: runs re-queued or failed", tasks=lost)
        if self.metrics is not None:
            if report is not None:
                self.metrics.reconcile.labels("enqueued").inc(len(report.enqueued))
                self.metrics.reconcile.labels("removed").inc(len(report.removed))
            self.metrics.reconcile.labels("lost").inc(len(lost or []))
        self._refresh_metrics(force=True)

    def _refresh_metrics(self, *, force: bool = False) -> None:
        """Queue depths and tasks by status from the store, on the leader's reconcile passes
        and as often on a standby, so every scheduler's endpoint shows them."""
        if self.metrics is None:
            return
        now_s = time.monotonic()
        if not force and now_s - self._last_metrics < self.reconcile_every:
            return
        self._last_metrics = now_s
        self._safely(self.metrics.refresh, self.runtime.store)

    def _clean_registries(self) -> None:
        """Move jobs of dead workers out of RQ's started registries now, instead of waiting
        for RQ's own 10-minute maintenance pass."""
        from orchestrator.queue import rqjobs

        # Safe classes: the clean-up reads job hashes that anyone with Redis access can write
        # (RQ's defaults would unpickle them and call the callbacks they name).
        queues = rqjobs.queue_class().all(
            connection=self.redis, job_class=rqjobs.job_class(), serializer=rqjobs.serializer()
        )
        for queue in queues:
            queue.started_job_registry.cleanup()

    def _fail_lost(self, fail_lost: Any) -> list[str]:
        ttl = self.runtime.settings.heartbeat_ttl_s
        return list(fail_lost(self.redis, self.runtime.tasks, ttl_s=ttl))

    def heartbeat(self) -> None:
        with self.runtime.store.session() as session:
            state = session.get(SchedulerState, STATE)
            if state is not None:
                state.leader = self.lease.holder
                state.heartbeat_at = utcnow()

    def tick(self, now: dt.datetime | None = None) -> TickReport:
        """One iteration; a standby (not the lease holder) does nothing. Without Redis the
        lease cannot be checked: firing goes on (the ledger keeps it exactly-once) and the
        jobs wait in the store until Redis is back."""
        from redis import RedisError

        try:
            leading = self.lease.hold()
        except (RedisError, OSError) as exc:
            log.warning("Redis unreachable; firing without the lease", error=str(exc))
            leading = True
        if self.metrics is not None:
            self.metrics.leader.set(1 if leading else 0)
        if not leading:
            self._refresh_metrics()
            return TickReport(leader=False)
        self.reload()
        if self.config is None:
            return TickReport(leader=True)
        applied = self._safely(self.ingest.step)
        if self.metrics is not None and applied:
            self.metrics.reports.inc(applied)
        events, fired = self.poll(now)
        pushed = self.release()
        self.reconcile()
        self.heartbeat()
        return TickReport(leader=True, events=events, fired=fired, pushed=pushed)

    # -- schedules -------------------------------------------------------------------------

    def _schedule(self, config: Config) -> None:
        if self.schedules is None:
            return
        for job in self.schedules.get_jobs():
            job.remove()
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        from orchestrator.tasks.spec import parse_duration

        for trigger in config.triggers:
            spec = trigger.on.schedule
            if spec is None or not trigger.enabled:
                continue
            when = (
                CronTrigger.from_crontab(spec.cron, timezone=spec.timezone)
                if spec.cron
                else IntervalTrigger(
                    seconds=parse_duration(spec.every or "0"), timezone=spec.timezone
                )
            )
            # coalesce: runs missed while down collapse into one, and the miss is logged.
            self.schedules.add_job(
                self._tick_schedule,
                when,
                args=[trigger.name],
                id=trigger.name,
                coalesce=True,
                misfire_grace_time=None,
                max_instances=1,
            )

    def _tick_schedule(self, name: str) -> None:
        if self.lease.leader() != self.lease.holder:
            return
        now = utcnow().replace(microsecond=0)
        entity = hashlib.sha256(f"{name}@{now.isoformat()}".encode()).hexdigest()[:32]
        with self.runtime.store.session() as session:
            ev.record_event(
                session,
                ev.SCHEDULE_FIRED,
                entity_id=entity,
                project="",
                name=name,
                payload={"trigger": name, "time": now.isoformat()},
            )
        log.info("schedule ticked", trigger=name, time=now.isoformat())
        self.woken.set()

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Until `stop()` (SIGINT/SIGTERM): tick, then wait for a wake-up or the interval."""
        from apscheduler.schedulers.background import BackgroundScheduler

        from orchestrator.queue.wakeup import Listener

        self.schedules = BackgroundScheduler(timezone="UTC")
        self.schedules.start()
        listener = Listener(self.redis, self.woken)
        if self.wakeup:
            listener.start()
        self.reload(force=True)
        log.info(
            "scheduler started",
            holder=self.lease.holder,
            triggers=str(self.path),
            poll_interval=self.poll_interval,
        )
        from orchestrator import health

        home = self.runtime.settings.home
        beat_name = str(os.getpid())
        beaten = 0.0
        try:
            while not self._stop.is_set():
                self.woken.clear()
                if time.monotonic() - beaten >= 1.0:  # busy loops need not write each time
                    health.beat(home, "scheduler", beat_name)
                    beaten = time.monotonic()
                report = self._safely(self.tick)
                if report is not None and report.leader and report.events:
                    continue  # more may have arrived while we worked
                interval = (
                    self.poll_interval
                    if report is None or report.leader
                    else min(self.poll_interval, self.lease.ttl_ms / 3000)
                )
                deadline = time.monotonic() + interval
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if self.woken.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                        break
        finally:
            health.forget(home, "scheduler", beat_name)
            if self.wakeup:
                listener.stop()
            self.schedules.shutdown(wait=False)
            self._safely(self.lease.release)
            log.info("scheduler stopped")

    def stop(self) -> None:
        self._stop.set()

    # -- helpers ---------------------------------------------------------------------------

    def _template_target(self, ref: str) -> tuple[str, str] | None:
        try:
            info = self.runtime.tasks.template(ref)
        except RetrainError:
            return None
        return info.project, info.name

    def _record_config_error(self, message: str) -> None:
        def write() -> None:
            with self.runtime.store.session() as session:
                state = session.get(SchedulerState, STATE)
                if state is None:
                    state = SchedulerState(name=STATE, cursor=0)
                    session.add(state)
                state.config_path = str(self.path)
                state.config_error = message

        self._safely(write)

    def _safely(self, step: Any, *args: Any) -> Any:
        """Error policy at the loop boundary: an outage is logged and retried next time; a
        bug is logged with its traceback; neither stops the daemon."""
        try:
            return step(*args)
        except RetrainError as exc:
            log.warning(
                "step failed; will retry", step=getattr(step, "__name__", str(step)), error=str(exc)
            )
        except Exception:
            log.exception("step crashed; will retry", step=getattr(step, "__name__", str(step)))
        return None


def _return_freed_memory() -> None:
    """Give memory freed after parsing a large triggers file back to the OS (glibc keeps it
    otherwise, and the daemon's resident size would stay at the parsing peak)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return
