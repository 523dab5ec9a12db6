"""The daemon's loop contains its failures: each step (poll, ingest, reconcile, lost-worker
check, release, reload, heartbeat) fails alone, backs off, and is named by `retrain status`
and `retrain health scheduler`; a broken or half-valid triggers file never wedges the leader.

Schedulers run in-process in a thread (so a step can be made to fail) against real Redis and
both stores; `retrain status` and `retrain health` are the real CLI."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from orchestrator.queue import keys
from orchestrator.queue.wakeup import Listener, publisher
from orchestrator.runtime import Runtime
from orchestrator.scheduler import daemon as daemon_module
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.scheduler.engine import PollResult
from orchestrator.settings import Settings
from orchestrator.triggers.config import Config, load_config
from orchestrator.triggers.schema import ScheduleSource
from tests.conftest import Result
from tests.tasks.conftest import Repo, git_repo  # noqa: F401  (fixture)
from tests.triggers.conftest import Loop, daemon, wait_for
from tests.triggers.test_scheduler import tasks_of


@pytest.fixture(autouse=True)
def quiet_daemon() -> Iterator[None]:
    """The in-process scheduler's log lines must not mix into the CLI's captured output."""
    with open(os.devnull, "w") as sink:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))
        try:
            yield
        finally:
            structlog.reset_defaults()


@contextmanager
def running(scheduler: Scheduler) -> Iterator[Scheduler]:
    thread = threading.Thread(target=scheduler.run, name="scheduler-under-test")
    thread.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()
        thread.join(30)
        assert not thread.is_alive(), "the scheduler did not stop"


def status(loop: Loop) -> Any:
    return loop.cli.json("status")


def step(loop: Loop, name: str) -> dict[str, Any]:
    steps = {s["name"]: s for s in status(loop)["scheduler"]["steps"]}
    return dict(steps.get(name) or {})


def health(loop: Loop, expect: int) -> Result | None:
    """`retrain health scheduler` when it exits `expect`, else None (to wait for it)."""
    try:
        return loop.cli("health", "scheduler", expect=expect)
    except AssertionError:
        return None


def touch(path: Path, text: str) -> None:
    path.write_text(text)
    stamp = path.stat().st_mtime + 1
    os.utime(path, (stamp, stamp))  # a different mtime even within one second


def fast(runtime: Runtime, path: Path, **extra: Any) -> Scheduler:
    args: dict[str, Any] = {"poll_interval": 0.1, "reconcile_every": 0.2, "backoff_cap": 0.5}
    return Scheduler(runtime, path, **{**args, **extra})


# -- finding 3: no valid triggers file ---------------------------------------------------------


def test_an_invalid_file_at_start_leads_without_firing_and_says_so(
    loop: Loop, database_url: str
) -> None:
    good = loop.triggers.read_text()
    touch(loop.triggers, good.replace("template: dataset_blogpost/training", "template: [x"))
    runtime = Runtime()
    with running(fast(runtime, loop.triggers)):
        wait_for(lambda: status(loop)["scheduler"]["alive"], "a heartbeat")
        wait_for(lambda: step(loop, "reconcile").get("last_ok_at"), "a reconcile pass")
        data = status(loop)["scheduler"]
        assert data["firing"] is False
        assert str(loop.triggers) in data["not_firing_reason"]
        assert data["config"]["loaded_at"] is None
        for name in ("ingest", "reconcile", "lost_workers", "heartbeat"):
            # Each step records its first success on its own schedule (seen: heartbeat after
            # the reconcile pass on a loaded machine): wait for it rather than race it.
            wait_for(lambda name=name: step(loop, name).get("last_ok_at"), f"a {name} pass")
        out = loop.cli("status").out
        assert "not firing" in out and "stay in force" not in out
        probe = loop.cli("health", "scheduler", expect=1)
        assert "not firing" in probe.err and str(loop.triggers) in probe.err

        touch(loop.triggers, good)
        wait_for(lambda: status(loop)["scheduler"]["firing"], "the fixed file to load")
        assert status(loop)["scheduler"]["config"]["error"] is None
        wait_for(lambda: health(loop, 0), "health to turn healthy")
        runtime.datasets.tag(loop.version(runtime), ["Production"])
        wait_for(lambda: tasks_of(runtime), "the trigger to fire once the file is fixed")
    runtime.close()


# -- finding 4: a cron APScheduler refuses -----------------------------------------------------

SCHEDULES = """\
  - name: nightly
    on: {schedule: {cron: "CRON"}}
    run: {template: dataset_blogpost/training}
  - name: hourly
    on: {schedule: {every: EVERY}}
    run: {template: dataset_blogpost/training}
"""


def test_a_bad_cron_at_start_does_not_kill_the_daemon(loop: Loop) -> None:
    loop.triggers.write_text(
        loop.triggers.read_text() + SCHEDULES.replace("CRON", "99 * * * *").replace("EVERY", "1h")
    )
    with daemon() as proc:
        wait_for(lambda: status(loop)["scheduler"]["alive"] or proc.poll() is not None,
                 "a heartbeat")
        assert proc.poll() is None, "the daemon exited"
        data = status(loop)["scheduler"]
        assert data["firing"] is False and "99 * * * *" in data["config"]["error"]
        assert "on.schedule.cron" in data["config"]["error"]  # which trigger's field, and where


def _apscheduler_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever `load_config` accepts, make the daemon see `cron: "99 * * * *"` where the
    file says 58: the daemon must survive a cron only APScheduler refuses."""

    def load(path: Path, **kwargs: Any) -> Config:
        config = load_config(path, **kwargs)
        triggers = []
        for t in config.triggers:
            spec = t.on.schedule
            if spec is not None and spec.cron == "58 * * * *":
                bad = ScheduleSource.model_construct(cron="99 * * * *", every=None,
                                                     timezone="UTC")
                t = t.model_copy(update={"on": t.on.model_copy(update={"schedule": bad})})
            triggers.append(t)
        return Config(config.path, tuple(triggers), config.revisions, config.digest)

    monkeypatch.setattr(daemon_module, "load_config", load)


def test_a_reload_with_a_bad_cron_changes_nothing(
    loop: Loop, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apscheduler_only(monkeypatch)
    base = loop.triggers.read_text()
    touch(loop.triggers, base + SCHEDULES.replace("CRON", "0 3 * * *").replace("EVERY", "1h"))
    runtime = Runtime()
    with running(fast(runtime, loop.triggers)) as scheduler:
        wait_for(lambda: status(loop)["scheduler"]["firing"], "the triggers to load")
        before = {j.id: str(j.trigger) for j in scheduler.schedules.get_jobs()}
        assert sorted(before) == ["hourly", "nightly"]
        digest = scheduler.config.digest if scheduler.config else None

        # The bad cron comes first; the interval after it changes too: neither may apply.
        touch(loop.triggers, base + SCHEDULES.replace("CRON", "58 * * * *")
              .replace("EVERY", "2h"))
        wait_for(lambda: status(loop)["scheduler"]["config"]["error"], "the reload error")
        data = status(loop)["scheduler"]
        assert "nightly" in data["config"]["error"] and "99" in data["config"]["error"]
        assert data["firing"] is True  # the previous triggers stay in force
        assert "stay in force" in loop.cli("status").out
        assert {j.id: str(j.trigger) for j in scheduler.schedules.get_jobs()} == before
        assert scheduler.config is not None and scheduler.config.digest == digest
        assert step(loop, "reload")["last_error"]
        runtime.datasets.tag(loop.version(runtime), ["Production"])
        wait_for(lambda: tasks_of(runtime), "the old triggers to keep firing")
    runtime.close()


# -- finding 5: a stale configuration error ----------------------------------------------------


def test_restoring_the_last_good_file_clears_the_error(loop: Loop, database_url: str) -> None:
    good = loop.triggers.read_text()
    runtime = Runtime()
    with running(fast(runtime, loop.triggers)):
        wait_for(lambda: status(loop)["scheduler"]["firing"], "the triggers to load")
        touch(loop.triggers, good.replace("template: dataset_blogpost/training", "template: [x"))
        wait_for(lambda: status(loop)["scheduler"]["config"]["error"], "the error")
        touch(loop.triggers, good)
        wait_for(lambda: status(loop)["scheduler"]["config"]["error"] is None,
                 "the restored file to clear the error")
        assert step(loop, "reload")["last_error"] is None
    runtime.close()


def test_after_a_failover_the_new_leader_shows_its_own_state(
    loop: Loop, tmp_path: Path, database_url: str
) -> None:
    good = loop.triggers.read_text()
    broken = tmp_path / "broken.yaml"
    touch(broken, good.replace("template: dataset_blogpost/training", "template: [x"))
    runtime = Runtime()
    first = fast(runtime, broken, lease_ttl=1.0)
    with running(first):
        wait_for(lambda: status(loop)["scheduler"]["config"]["error"], "the first leader")
        second = fast(runtime, loop.triggers, lease_ttl=1.0)
        with running(second):
            wait_for(lambda: second.lease.leader() == first.lease.holder, "the standby")
            first.stop()
            wait_for(lambda: status(loop)["scheduler"]["recorded_leader"]
                     == second.lease.holder, "the standby to take over")
            wait_for(lambda: status(loop)["scheduler"]["firing"], "the new leader's state")
            data = status(loop)["scheduler"]
            assert data["config"]["error"] is None
            assert data["config"]["path"] == str(loop.triggers)
    runtime.close()


# -- finding 11: a template that does not resolve ----------------------------------------------


def test_an_unknown_template_is_a_problem_at_load(
    loop: Loop, database_url: str, git_repo: Repo  # noqa: F811
) -> None:
    good = loop.triggers.read_text()
    touch(loop.triggers, good.replace("dataset_blogpost/training", "dataset_blogpost/nope"))
    runtime = Runtime()
    with running(fast(runtime, loop.triggers)):
        wait_for(lambda: status(loop)["scheduler"]["config"]["loaded_at"], "the triggers")
        wait_for(lambda: status(loop)["scheduler"]["config"]["problems"], "the problem")
        [problem] = status(loop)["scheduler"]["config"]["problems"]
        assert "retrain-on-production-data" in problem and "dataset_blogpost/nope" in problem
        assert str(loop.triggers) in problem
        out = loop.cli("status").out
        assert "dataset_blogpost/nope" in out and ": OK" not in out
        # Registering the template clears it, without touching the file.
        loop.cli("task", "create", "--project", "dataset_blogpost", "--name", "nope",
                 "--repo", str(git_repo.path), "--script", "train.py", "--queue", "gpu")
        wait_for(lambda: status(loop)["scheduler"]["config"]["problems"] == [],
                 "the problem to clear once the template exists")
    runtime.close()


# -- finding 15: the wake-up channel -----------------------------------------------------------


def test_the_wakeup_channel_is_per_database(loop: Loop) -> None:
    client = redis.Redis.from_url(loop.redis_url)
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    other = db + 1
    assert keys.events_channel(db) != keys.events_channel(other)
    woken = threading.Event()
    listener = Listener(client, woken)
    listener.start()
    try:
        wait_for(lambda: client.pubsub_numsub(keys.events_channel(db))[0][1] == 1,
                 "the listener to subscribe")
        # Another deployment on the same server, another database: not our business.
        client.publish(keys.events_channel(other), b"1")
        assert not woken.wait(1.0)
        publisher(Settings.load())()  # this deployment's store announcing its events
        assert woken.wait(10)
    finally:
        listener.stop()
        client.close()


# -- the rule: every step is contained ---------------------------------------------------------

Injector = Callable[[Scheduler, pytest.MonkeyPatch, Callable[[], None]], None]


def _fault_poll(s: Scheduler, mp: pytest.MonkeyPatch, boom: Callable[[], None]) -> None:
    real = s.engine.poll
    mp.setattr(s.engine, "poll", lambda *a, **k: (boom(), real(*a, **k))[1])


def _fault_ingest(s: Scheduler, mp: pytest.MonkeyPatch, boom: Callable[[], None]) -> None:
    real = s.ingest.step
    mp.setattr(s.ingest, "step", lambda *a, **k: (boom(), real(*a, **k))[1])


def _fault_reconcile(s: Scheduler, mp: pytest.MonkeyPatch, boom: Callable[[], None]) -> None:
    real = s.runtime.tasks.reconcile
    mp.setattr(s.runtime.tasks, "reconcile", lambda *a, **k: (boom(), real(*a, **k))[1])


def _fault_lost(s: Scheduler, mp: pytest.MonkeyPatch, boom: Callable[[], None]) -> None:
    real = s._fail_lost
    mp.setattr(s, "_fail_lost", lambda *a, **k: (boom(), real(*a, **k))[1])


def _fault_release(s: Scheduler, mp: pytest.MonkeyPatch, boom: Callable[[], None]) -> None:
    real = s.engine.release_held
    mp.setattr(s.engine, "release_held", lambda *a, **k: (boom(), real(*a, **k))[1])


def _fault_reload(s: Scheduler, mp: pytest.MonkeyPatch, boom: Callable[[], None]) -> None:
    real = daemon_module.load_config
    mp.setattr(daemon_module, "load_config", lambda *a, **k: (boom(), real(*a, **k))[1])


FAULTS: dict[str, Injector] = {
    "poll": _fault_poll,
    "ingest": _fault_ingest,
    "reconcile": _fault_reconcile,
    "lost_workers": _fault_lost,
    "release": _fault_release,
    "reload": _fault_reload,
}


@pytest.mark.parametrize("failing", sorted(FAULTS))
def test_a_failing_step_stops_nothing_else_and_is_named(
    loop: Loop, database_url: str, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    runtime = Runtime()
    scheduler = fast(runtime, loop.triggers, step_budget_s=1.0)
    broken = threading.Event()

    def boom() -> None:
        if broken.is_set():
            raise RuntimeError(f"injected fault in {failing}")

    FAULTS[failing](scheduler, monkeypatch, boom)
    with running(scheduler):
        wait_for(lambda: status(loop)["scheduler"]["firing"], "the triggers to load")
        broken.set()
        if failing == "reload":
            touch(loop.triggers, loop.triggers.read_text() + "# edited\n")
        first = loop.version(runtime, "during")
        runtime.datasets.tag(first, ["Production"])
        wait_for(lambda: step(loop, failing).get("last_error"), f"{failing} to be shown failing")
        failed = step(loop, failing)
        assert f"injected fault in {failing}" in failed["last_error"]
        assert failed["failing_since"] and failed["failures"] >= 1
        others = [n for n in ("poll", "ingest", "reconcile", "lost_workers", "heartbeat")
                  if n != failing]
        marks = {n: step(loop, n)["last_ok_at"] for n in others}
        wait_for(lambda: all(step(loop, n)["last_ok_at"] != marks[n] for n in others),
                 "the other steps to go on")
        if failing != "poll":
            wait_for(lambda: tasks_of(runtime), "firing to go on")
        result = wait_for(lambda: health(loop, 1), "health to turn unhealthy")
        assert isinstance(result, Result) and f"step {failing} failing" in result.err
        assert f"{failing} failing" in loop.cli("status").out

        broken.clear()
        wait_for(lambda: step(loop, failing).get("last_error") is None, "the step to recover")
        wait_for(lambda: tasks_of(runtime), "firing to resume")
        wait_for(lambda: health(loop, 0), "health to turn healthy again")
    assert [t.parameters["General/dataset_id"] for t in tasks_of(runtime)] == [first]
    runtime.close()


def test_a_failing_heartbeat_is_named_by_health(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Runtime()
    scheduler = fast(runtime, loop.triggers, step_budget_s=1.0)
    broken = threading.Event()
    real = scheduler.heartbeat

    def heartbeat() -> None:
        if broken.is_set():
            raise RuntimeError("injected fault in heartbeat")
        real()

    monkeypatch.setattr(scheduler, "heartbeat", heartbeat)
    with running(scheduler):
        wait_for(lambda: status(loop)["scheduler"]["firing"], "the triggers to load")
        broken.set()
        runtime.datasets.tag(loop.version(runtime), ["Production"])
        wait_for(lambda: tasks_of(runtime), "firing to go on without the heartbeat")
        result = wait_for(lambda: health(loop, 1), "health to name the heartbeat")
        assert isinstance(result, Result) and "step heartbeat failing" in result.err
        broken.clear()
        wait_for(lambda: step(loop, "heartbeat").get("last_ok_at"), "recovery")
        wait_for(lambda: health(loop, 0), "health to turn healthy again")
    runtime.close()


def test_a_cursor_conflict_never_spins(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    calls: list[int] = []

    def conflict(*_a: Any, **_k: Any) -> PollResult:
        calls.append(1)
        return PollResult(events=1, cursor=1, conflict=True)

    monkeypatch.setattr(scheduler.engine, "poll", conflict)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (scheduler.tick(), done.set()), daemon=True)
    thread.start()
    assert done.wait(60), f"tick spun on the conflict ({len(calls)} polls)"
    assert 1 < len(calls) <= 10
    failed = scheduler.steps.get("poll")
    assert failed is not None and "conflict" in (failed.last_error or "")
    scheduler.tick()  # backing off: no poll at all this time
    assert len(calls) <= 10
    runtime.close()


def test_a_failing_schedule_tick_is_named_and_ticks_resume(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop.triggers.write_text(loop.triggers.read_text() + """\
  - name: every-second
    on: {schedule: {every: 1s}}
    run: {template: dataset_blogpost/training}
""")
    runtime = Runtime()
    scheduler = fast(runtime, loop.triggers, step_budget_s=1.0)
    broken = threading.Event()
    broken.set()
    real = scheduler.lease.leader

    def leader() -> str | None:
        if broken.is_set():
            raise redis.ConnectionError("injected fault in schedules")
        return real()

    monkeypatch.setattr(scheduler.lease, "leader", leader)
    with running(scheduler):
        wait_for(lambda: step(loop, "schedules").get("last_error"), "the tick to fail visibly")
        assert "injected fault in schedules" in step(loop, "schedules")["last_error"]
        result = wait_for(lambda: health(loop, 1), "health to name the schedules step")
        assert isinstance(result, Result) and "step schedules failing" in result.err
        assert not tasks_of(runtime, "every-second")
        wait_for(lambda: step(loop, "poll").get("last_ok_at"), "the other steps to go on")
        broken.clear()
        wait_for(lambda: tasks_of(runtime, "every-second"), "the schedule to tick again")
        wait_for(lambda: step(loop, "schedules").get("last_error") is None, "recovery")
    runtime.close()
