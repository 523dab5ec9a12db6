"""`retrain scheduler`: the daemon around the firing engine.

One loop iteration (`tick`) is a list of named steps, each callable alone:
lease -> reload triggers.yaml if it changed -> ingest worker reports -> poll events until
caught up -> push jobs -> release held runs -> reconcile and the lost-worker check (every
30 s) -> heartbeat. Each step is contained (`orchestrator.scheduler.steps`): one that fails
is logged, backs off and is shown in `retrain status` and `retrain health scheduler`, and the
others go on. Between iterations the daemon sleeps until the store announces new events on
Redis, or the poll interval passes. Cron and interval triggers run on APScheduler and enter
the event log as `schedule.fired` events, so they go through the same ledger as everything
else.

Without a valid triggers file the leader still leads and does everything that needs no
triggers (ingest, reconcile, lost-worker check, heartbeat) but fires nothing, and says so: a
standby would load the same file, and reports must keep being applied meanwhile.
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
from orchestrator.scheduler import schedules
from orchestrator.scheduler.engine import STATE, Engine, PollResult
from orchestrator.scheduler.lease import Lease
from orchestrator.scheduler.steps import BACKOFF_CAP_S, StepFailed, Steps
from orchestrator.store import events as ev
from orchestrator.store.models import SchedulerState, utcnow
from orchestrator.triggers.config import Config, load_config
from orchestrator.triggers.templates import store_runs
from orchestrator.yamlfile import FileError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from orchestrator.runtime import Runtime
    from orchestrator.scheduler.metrics import Metrics
    from orchestrator.tasks.views import TaskInfo

log = structlog.get_logger("retrain.scheduler")

POLL_INTERVAL_S = 5.0
RECONCILE_EVERY_S = 30.0
LEASE_TTL_S = 10.0
STANDBY_CHECK = 0.05
"""A standby tries for the lease every this fraction of its time to live (0.5 s of 10 s): a
leader killed without releasing it is replaced within the lease time plus that, where a third
of it (as before) let takeover run to 13 s. A standby's try is one `SET NX`."""
BATCH = 1000
CONFLICT_RETRIES = 5
"""Cursor conflicts in a row that one poll step retries (after short, growing pauses) before
it fails and backs off: two schedulers racing never make either one spin."""


@dataclass
class TickReport:
    leader: bool
    events: int = 0
    fired: int = 0
    pushed: int = 0
    firing: bool = False
    reconcile_deferred: bool = False
    """This was the first poll (see `Scheduler.run`): the reconcile pass is the next tick's."""


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
        backoff_cap: float = BACKOFF_CAP_S,
        step_budget_s: float | None = None,
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
        self.ingest = Ingest(
            self.redis,
            runtime.tasks,
            runtime.models,
            "scheduler",
            secret=runtime.settings.worker_secret,
        )
        self.steps = Steps(backoff_cap_s=backoff_cap, budget_s=step_budget_s)
        """Each loop step's last success, last error and back-off."""
        self.config: Config | None = None
        self._mtime: float | None = None
        self._config_error: str | None = None
        """Why the file last failed to load (None: it loaded): this scheduler's own view."""
        self._loaded_at: dt.datetime | None = None
        self.problems: list[str] = []
        """What the loaded file refers to and the store cannot resolve (missing templates)."""
        self._templates_checked = 0.0
        self._missing: set[str] = set()
        self._scheduled: dict[str, schedules.Key] = {}
        self._leading = False
        self._last_reconcile = 0.0
        self._last_metrics = 0.0
        self._stop = threading.Event()
        self.woken = threading.Event()
        """Set by the Redis listener and by schedule ticks: poll now."""
        self.schedules: Any = None
        """APScheduler's BackgroundScheduler for cron and interval triggers: started by the
        first reload that has one, once `run` has begun (a file without any never loads
        APScheduler)."""
        self._running = False
        self._first_poll_pending = False
        """Set by `run`: the first leading tick polls before the first reconcile pass."""

    # -- steps -----------------------------------------------------------------------------

    def reload(self, *, force: bool = False) -> bool:
        """Load triggers.yaml if it changed; True when a new configuration took effect.

        All or nothing: the file is parsed and every schedule built before anything is
        swapped, so an invalid file (or a cron only APScheduler refuses) keeps the previous
        triggers in force, or none when there were none. The error is logged and recorded for
        `retrain status`; restoring the last good file clears it. An unexpected failure (the
        database is down) raises, and the file is read again on the next try."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = None
        settled = self.config is not None or self._config_error is not None
        if not force and settled and mtime == self._mtime:
            if self.config is not None:
                self._check_templates(self.config)
            return False
        try:
            config = load_config(
                self.path,
                resolve_template=self._template_target,
                runs=store_runs(self.runtime.tasks),
            )
            plan = schedules.plan(config)
        except (FileError, RetrainError) as exc:
            self._mtime = mtime
            self._config_failed(str(exc))
            return False
        if self.config is not None and config.digest == self.config.digest:
            self._mtime = mtime
            self._config_ok()
            return False
        self.engine.sync_triggers(config)
        self._mtime = mtime
        self.config = config
        self._loaded_at = utcnow()
        _return_freed_memory()
        if plan and self.schedules is None and self._running:
            from apscheduler.schedulers.background import BackgroundScheduler

            self.schedules = BackgroundScheduler(timezone="UTC")
            self.schedules.start()
        if self.schedules is not None:
            schedules.apply(self.schedules, self._scheduled, plan, self._tick_schedule)
        self._config_ok()
        self._check_templates(config, force=True)
        log.info(
            "triggers loaded",
            path=str(self.path),
            triggers=len(config.triggers),
            digest=config.digest,
        )
        return True

    def _reload_step(self) -> None:
        """The loop's reload: a file found invalid has failed the step without raising (and
        without backing off: the next change of the file is read at once)."""
        self.reload()
        if self._config_error is None:
            self.steps.ok("reload")

    def _config_failed(self, message: str) -> None:
        self._config_error = message
        self.steps.failed("reload", message, backoff=False)
        log.error(
            "triggers file is invalid; keeping the previous triggers"
            if self.config is not None
            else "triggers file is invalid; nothing fires until it is fixed",
            path=str(self.path),
            error=message,
        )
        self._record_config()

    def _config_ok(self) -> None:
        cleared = self._config_error is not None
        self._config_error = None
        self.steps.ok("reload")
        if cleared:
            log.info("triggers file is valid again", path=str(self.path))
            self._record_config()

    def poll(self, now: dt.datetime | None = None) -> tuple[int, int]:
        """Fire for every event past the cursor, batch after batch, pushing each batch's jobs
        once its transaction has committed. Returns (events read, tasks started)."""
        assert self.config is not None
        events = fired = conflicts = 0
        while True:
            result = self.engine.poll(self.config, now=now, batch=BATCH)
            if result.conflict:
                conflicts += 1
                if conflicts > CONFLICT_RETRIES:
                    raise StepFailed(
                        f"cursor conflict: another scheduler moved the cursor {conflicts} times "
                        f"in a row (at {result.cursor}); backing off"
                    )
                log.info("another scheduler advanced the cursor; retrying", cursor=result.cursor)
                self._stop.wait(0.02 * 2**conflicts)
                continue
            conflicts = 0
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
        """Every `reconcile_every` seconds, two steps: `reconcile` (Redis against the store)
        and `lost_workers` (runs whose worker died)."""
        now_s = time.monotonic() if now_s is None else now_s
        if not force and now_s - self._last_reconcile < self.reconcile_every:
            return
        self._last_reconcile = now_s
        self.steps.run("reconcile", self._reconcile_queues)
        lost = self.steps.run("lost_workers", self._check_lost)
        if self.metrics is not None:
            self.metrics.reconcile.labels("lost").inc(len(lost or []))
        self._refresh_metrics(force=True)

    def _reconcile_queues(self) -> None:
        report = self.runtime.tasks.reconcile()
        if report.enqueued or report.removed:
            log.info(
                "reconciled Redis with the store",
                enqueued=report.enqueued,
                removed=report.removed,
                replaced=report.replaced,
            )
        if self.metrics is not None:
            self.metrics.reconcile.labels("enqueued").inc(len(report.enqueued))
            self.metrics.reconcile.labels("removed").inc(len(report.removed))
        self._clean_registries()

    def _check_lost(self) -> list[str]:
        from orchestrator.scheduler.ingest import fail_lost

        # The waiting reports first, whatever the ingest step's back-off: after an outage
        # that outlived a run's heartbeat key, its end (sent once Redis is back) is in the
        # stream, and must win over the verdict. If they cannot be applied (the ingest step
        # says why), no verdict this time; this step itself goes on.
        try:
            applied = self.ingest.step()
        except Exception as exc:
            log.warning("lost runs not judged: the waiting reports cannot be applied first",
                        error=f"{type(exc).__name__}: {exc}")
            return []
        if self.metrics is not None and applied:
            self.metrics.reports.inc(applied)
        lost = self._fail_lost(fail_lost)
        if lost:
            log.warning("worker lost: runs re-queued or failed", tasks=lost)
        return lost

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
            try:
                queue.started_job_registry.cleanup()
            except Exception:  # one queue's odd entries must not stop the others' clean-up
                log.exception("started registry clean-up failed", queue=queue.name)

    def _fail_lost(self, fail_lost: Any) -> list[str]:
        ttl = self.runtime.settings.heartbeat_ttl_s
        return list(fail_lost(self.redis, self.runtime.tasks, ttl_s=ttl))

    def heartbeat(self) -> None:
        """Record that this scheduler leads, with its own view of the triggers file and of
        its steps: after a failover the row shows the new leader, never the old one's error."""
        with self.runtime.store.session() as session:
            state = self._state_row(session)
            state.leader = self.lease.holder
            state.heartbeat_at = utcnow()
            self._write_config(state)
            state.steps = self.steps.snapshot()
            refused = self.ingest.refused_since_recorded
            if refused:
                state.reports_refused = (state.reports_refused or 0) + refused
                if self.ingest.last_refused is not None:
                    state.last_refused_at, state.last_refused_reason = self.ingest.last_refused
        # Counted once it is committed (a failed heartbeat adds them at the next one).
        self.ingest.refused_since_recorded -= refused

    def tick(self, now: dt.datetime | None = None) -> TickReport:
        """One iteration; a standby (not the lease holder) does nothing. Without Redis the
        lease cannot be checked: firing goes on (the ledger keeps it exactly-once) and the
        jobs wait in the store until Redis is back. Every step runs contained: one failing
        does not stop the others (see `orchestrator.scheduler.steps`)."""
        leading = self._hold_lease()
        if self.metrics is not None:
            self.metrics.leader.set(1 if leading else 0)
        if not leading:
            self._leading = False
            self._refresh_metrics()
            return TickReport(leader=False)
        if not self._leading:
            log.info("leading", holder=self.lease.holder)
            self._leading = True
        self.steps.run("reload", self._reload_step, settles=False)
        applied = self.steps.run("ingest", self.ingest.step)
        if self.metrics is not None and applied:
            self.metrics.reports.inc(applied)
        report = TickReport(leader=True, firing=self.config is not None)
        if self.config is not None:
            polled = self.steps.run("poll", lambda: self.poll(now))
            if polled is not None:
                report.events, report.fired = polled
            report.pushed = self.steps.run("release", self.release) or 0
        if self._first_poll_pending:
            # The daemon's first poll comes first (a standby's takeover waits on it): the
            # reconcile pass, and RQ, which it loads, follow in the next tick, which `run`
            # starts at once.
            self._first_poll_pending = False
            report.reconcile_deferred = True
        else:
            self.reconcile()
        self.steps.run("heartbeat", self.heartbeat)
        if self.metrics is not None:
            for step in self.steps.snapshot():
                self.metrics.step_failures.labels(step["name"]).set(step["failures"])
        return report

    def _hold_lease(self) -> bool:
        from redis import RedisError

        try:
            leading = self.lease.hold()
        except (RedisError, OSError) as exc:
            state = self.steps.get("lease")
            if state is not None and state.failures == 0:  # say it once per outage
                log.warning("Redis unreachable; firing without the lease", error=str(exc))
            self.steps.failed("lease", f"Redis unreachable: {exc}", backoff=False)
            return True
        self.steps.ok("lease")
        return leading

    # -- schedules -------------------------------------------------------------------------

    def _tick_schedule(self, name: str) -> None:
        self.steps.run("schedules", lambda: self._record_tick(name), backoff=False)

    def _record_tick(self, name: str) -> None:
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
        """Until `stop()` (SIGINT/SIGTERM): tick, then wait for a wake-up or the interval.
        The first poll comes as early as it can: nothing it does not need is loaded or
        started before it (`orchestrator.cli.daemon_imports`)."""
        from orchestrator.queue.wakeup import Listener

        self._running = True
        self._first_poll_pending = True
        listener = Listener(self.redis, self.woken)
        if self.wakeup:
            listener.start()
        log.info(
            "scheduler started",
            holder=self.lease.holder,
            triggers=str(self.path),
            poll_interval=self.poll_interval,
            signed=bool(self.runtime.settings.worker_secret),
        )
        if not self.runtime.settings.worker_secret:
            log.warning(
                "no worker secret: payloads and reports are not signed, so anyone with Redis "
                "access can forge them; set RETRAIN_WORKER_SECRET on schedulers and workers"
            )
        from orchestrator import health

        home = self.runtime.settings.home
        beat_name = str(os.getpid())
        beaten = 0.0
        try:
            while not self._stop.is_set():
                self.woken.clear()
                report = self._safely(self.tick)
                if time.monotonic() - beaten >= 1.0:  # busy loops need not write each time
                    health.beat(home, "scheduler", beat_name, self._health_detail())
                    beaten = time.monotonic()
                if report is not None and report.leader and report.events:
                    continue  # more may have arrived while we worked
                if report is not None and report.reconcile_deferred:
                    continue  # the first reconcile pass, now
                interval = (
                    self.poll_interval
                    if report is None or report.leader
                    else min(self.poll_interval, self.lease.ttl_ms / 1000 * STANDBY_CHECK)
                )
                deadline = time.monotonic() + interval
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if self.woken.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                        break
        finally:
            # Reports that arrived while stopping (workers stop first under `retrain up`, and
            # send their last `finished` or `released`) are applied now, not at the next start.
            self._safely(self._last_ingest)
            self._safely(self._sign_off)
            health.forget(home, "scheduler", beat_name)
            if self.wakeup:
                listener.stop()
            if self.schedules is not None:
                self.schedules.shutdown(wait=False)
            self._safely(self.lease.release)
            log.info("scheduler stopped")

    def stop(self) -> None:
        self._stop.set()

    def _sign_off(self) -> None:
        """A leader that stops says so in the store (`leader` cleared, its heartbeat kept):
        `status` then shows the scheduler down at once, not until its heartbeat ages out."""
        with self.runtime.store.session() as session:
            state = session.get(SchedulerState, STATE)
            if state is not None and state.leader == self.lease.holder:
                state.leader = None

    def _last_ingest(self) -> None:
        if self.lease.leader() == self.lease.holder:
            self.ingest.step(max_entries=10_000)

    # -- helpers ---------------------------------------------------------------------------

    def _template_target(self, ref: str) -> tuple[str, str] | None:
        try:
            info = self.runtime.tasks.template(ref)
        except RetrainError:
            return None
        return info.project, info.name

    def _check_templates(self, config: Config, *, force: bool = False) -> None:
        """Name each trigger whose template does not resolve, at load and then as often as
        reconcile runs (registering the template clears it without touching the file). An
        outage raises: it is not a missing template."""
        from orchestrator.errors import UserError

        now_s = time.monotonic()
        if not force and now_s - self._templates_checked < self.reconcile_every:
            return
        self._templates_checked = now_s
        missing: set[str] = set()
        for ref in sorted({t.run.template for t in config.triggers if t.enabled}):
            try:
                self.runtime.tasks.template(ref)
            except UserError:  # not found, ambiguous, malformed: it does not resolve
                missing.add(ref)
        if not force and missing == self._missing:
            return
        self._missing = missing
        place = schedules.Places(self.path)
        problems = [
            f"{place(t.name, t.run.template)}: trigger {t.name!r}: run.template: "
            f"no template {t.run.template!r}; every firing is skipped until it is registered"
            for t in config.triggers
            if t.enabled and t.run.template in missing
        ]
        if problems != self.problems:
            for problem in problems:
                log.warning("trigger refers to a missing template", problem=problem)
            self.problems = problems
            self._record_config()

    def _state_row(self, session: Session) -> SchedulerState:
        state = session.get(SchedulerState, STATE)
        if state is None:
            # The same starting point the engine gives a new row: the newest event.
            state = SchedulerState(name=STATE, cursor=ev.last_sequence(session))
            session.add(state)
        return state

    def _write_config(self, state: SchedulerState) -> None:
        state.config_path = str(self.path)
        state.config_error = self._config_error
        state.config_loaded_at = self._loaded_at
        state.config_problems = list(self.problems)
        state.reports_signed = bool(self.runtime.settings.worker_secret)

    def _record_config(self) -> None:
        """This scheduler's view of its file, now (the heartbeat repeats it), when leading."""
        if not self._leading:
            return

        def write() -> None:
            with self.runtime.store.session() as session:
                self._write_config(self._state_row(session))

        self._safely(write)

    def _health_detail(self) -> dict[str, Any]:
        """What `retrain health scheduler` judges besides liveness."""
        if self.config is not None:
            why = None
        elif self._config_error is not None:
            why = f"no valid triggers file is loaded: {self._config_error}"
        else:
            why = f"no triggers file loaded yet ({self.path})"
        return {
            "leader": self._leading,
            "firing": self.config is not None,
            "not_firing": why,
            "steps": self.steps.snapshot(),
            "reports": "signed" if self.runtime.settings.worker_secret else "unsigned",
        }

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

    try:
        # The C library is already loaded: look the symbol up in this process, rather than
        # finding its file (`ctypes.util.find_library` runs ldconfig, a fork and exec).
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return
