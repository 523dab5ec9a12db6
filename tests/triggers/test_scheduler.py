"""The scheduler against real Redis and real stores: exactly-once firing, crashes, outages,
two daemons, hot reload."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.scheduler.engine import Engine
from orchestrator.store.models import SchedulerState, Task, TriggerFiring
from orchestrator.triggers.config import load_config
from tests.triggers.conftest import Loop, daemon, retrain, wait_for


def tasks_of(runtime: Runtime, trigger: str = "retrain-on-production-data") -> list[Task]:
    with runtime.store.reader() as session:
        return list(session.scalars(select(Task).where(Task.trigger_name == trigger)
                                    .options(selectinload(Task.tag_rows))
                                    .order_by(Task.created_at)))


def test_a_tag_fires_one_run_and_a_retag_none(loop: Loop, database_url: str) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    assert scheduler.reload(force=True)
    scheduler.tick()  # the trigger starts from now: nothing before this counts

    version = loop.version(runtime)
    assert scheduler.tick().fired == 0  # final, but not tagged Production
    runtime.datasets.tag(version, ["Production"])
    report = scheduler.tick()
    assert report.fired == 1
    [task] = tasks_of(runtime)
    assert task.status == "queued" and task.parent_id == loop.template
    assert task.parameters == {"General/dataset_id": version,
                               "General/note": "retrain on occupancy v1.0.0"}
    assert task.tags == ["auto"] and task.queue == "gpu"
    assert loop.jobs() == [task.id]

    # Untag and tag again: a new event, the same version, no second run.
    runtime.datasets.untag(version, ["Production"])
    runtime.datasets.tag(version, ["Production"])
    scheduler.tick()
    assert len(tasks_of(runtime)) == 1
    history = loop.cli.json("history", "--trigger", "retrain-on-production-data")
    assert [(h["decision"], h["reason"]) for h in history] == [
        ("skipped", f"duplicate of task {task.id}"), ("fired", "")]

    # explain: every event of the version, every trigger's decision and why.
    explained = loop.cli.json("triggers", "explain", "--dataset-version", version)
    by_kind = {(r["kind"], r["decision"]): r for r in explained}
    assert by_kind[("dataset.version.tagged", "fired")]["task"] == task.id
    assert by_kind[("dataset.version.finalized", "not matched")]["reason"] == (
        "tags: lacks Production")
    assert ("dataset.version.untagged", "not matched") in by_kind
    test = loop.cli("triggers", "test", "retrain-on-production-data", "--dataset-version",
                    version)
    assert "match" in test.out and f"'{version}'" in test.out
    runtime.close()


@pytest.mark.parametrize("loop", [("queue", 1)], indirect=True)
def test_busy_trigger_holds_the_next_run_until_a_slot_frees(loop: Loop) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    first, second = loop.version(runtime, "a"), loop.version(runtime, "b")
    runtime.datasets.tag(first, ["Production"])
    runtime.datasets.tag(second, ["Production"])
    scheduler.tick()
    running, waiting = tasks_of(runtime)
    assert not running.held and waiting.held and loop.jobs() == [running.id]
    scheduler.tick()
    assert loop.jobs() == [running.id]  # still busy: the held run waits in the store
    runtime.tasks.start(running.id, "gpu-box-1")
    runtime.tasks.finish(running.id, "completed", exit_code=0, metrics={"val/acc": 0.93})
    assert scheduler.tick().pushed == 1
    assert sorted(loop.jobs()) == sorted([running.id, waiting.id])
    runtime.close()


@pytest.mark.parametrize("loop", [("skip", 1)], indirect=True)
def test_skip_when_busy_records_why(loop: Loop) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    for name in ("a", "b"):
        runtime.datasets.tag(loop.version(runtime, name), ["Production"])
    scheduler.tick()
    assert len(tasks_of(runtime)) == 1
    decisions = [h["decision"] + ": " + h["reason"] for h in loop.cli.json("history")]
    assert decisions[0] == "skipped: busy: 1 run(s) queued or running"
    runtime.close()


def test_killed_between_commit_and_enqueue_the_run_is_queued_once(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Runtime()
    load = Scheduler(runtime, loop.triggers)
    load.reload(force=True)  # start the trigger from now
    version = loop.version(runtime)

    # Redis unreachable: the daemon commits the firing, cannot enqueue, and is killed.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    env = {**os.environ, "RETRAIN_REDIS_URL": dead}
    with daemon(env=env) as proc:
        runtime.datasets.tag(version, ["Production"])
        wait_for(lambda: tasks_of(runtime), "the firing to be committed")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [task] = tasks_of(runtime)
    assert task.status == "queued" and loop.jobs() == []

    # Restarted against the real Redis: reconcile enqueues it, once.
    with daemon("--reconcile-every", "0.2"):
        wait_for(lambda: loop.jobs(), "the job to reach Redis")
    assert loop.jobs() == [task.id] and len(tasks_of(runtime)) == 1
    client = redis.Redis.from_url(loop.redis_url)
    assert client.lrange("rq:queue:gpu", 0, -1) == [task.id.encode()]
    client.close()
    runtime.close()


@pytest.mark.parametrize("loop", [("queue", 1000)], indirect=True)
def test_two_engines_racing_fire_each_event_once(loop: Loop, postgres_url: str) -> None:
    runtime = Runtime()
    config = load_config(loop.triggers)
    Engine(runtime.store, runtime.tasks).sync_triggers(config)
    versions = [loop.version(runtime, f"set-{i}") for i in range(200)]
    for version in versions:
        runtime.datasets.tag(version, ["Production"])

    # Two schedulers with no lease between them (as in a network partition).
    engines = [Engine(Runtime().store, runtime.tasks) for _ in range(2)]
    errors: list[BaseException] = []

    def work(engine: Engine) -> None:
        try:
            while engine.poll(config, batch=25).events:
                pass
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    tasks = tasks_of(runtime)
    assert len(tasks) == 200
    assert sorted(t.parameters["General/dataset_id"] for t in tasks) == sorted(versions)
    with runtime.store.reader() as session:
        fired = session.scalar(select(func.count()).select_from(TriggerFiring)
                               .where(TriggerFiring.decision == "fired"))
    assert fired == 200
    runtime.close()


@pytest.mark.parametrize("loop", [("queue", 1000)], indirect=True)
def test_two_daemons_and_a_burst_of_500(loop: Loop, postgres_url: str) -> None:
    runtime = Runtime()
    versions = [loop.version(runtime, f"batch-{i}") for i in range(500)]
    env = os.environ.copy()
    with daemon(env=env), daemon(env=env):
        wait_for(lambda: _cursor(runtime) > 0, "a daemon to take the lead and load triggers")
        for version in versions:
            runtime.datasets.tag(version, ["Production"])
        wait_for(lambda: len(loop.jobs()) >= 500, "500 jobs", timeout=120)
    tasks = tasks_of(runtime)
    assert len(tasks) == 500 and len(loop.jobs()) == 500
    assert len({t.parameters["General/dataset_id"] for t in tasks}) == 500
    runtime.close()


def _cursor(runtime: Runtime) -> int:
    with runtime.store.reader() as session:
        state = session.get(SchedulerState, "main")
        return state.cursor if state and state.config_loaded_at else 0


def test_redis_down_while_tagging_then_back(loop: Loop, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed for this test (CI installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _pings(url), "the private Redis to start")
        return proc

    server = start_redis()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    runtime = Runtime()
    try:
        with daemon("--reconcile-every", "0.2"):
            wait_for(lambda: _cursor(runtime) > 0 or _loaded(runtime), "the daemon to start")
            server.terminate()
            server.wait()
            versions = [loop.version(runtime, f"offline-{i}") for i in range(3)]
            for version in versions:
                runtime.datasets.tag(version, ["Production"])
            wait_for(lambda: len(tasks_of(runtime)) == 3, "the firings to be committed")
            assert all(t.status == "queued" for t in tasks_of(runtime))
            # Contained and visible: the lease and ingest steps fail, firing goes on.
            steps = wait_for(lambda: {s["name"]: s for s in loop.cli.json("status")["scheduler"]
                                      ["steps"] if s["last_error"]}.keys() >= {"lease", "ingest"}
                             and loop.cli.json("status")["scheduler"]["steps"], "failing steps")
            assert isinstance(steps, list)
            assert "Redis unreachable" in {s["name"]: s for s in steps}["lease"]["last_error"]
            server = start_redis()
            client = redis.Redis.from_url(url)
            wait_for(lambda: client.llen("rq:queue:gpu") == 3, "the jobs to reach Redis")
            client.close()
    finally:
        server.terminate()
        server.wait()
        runtime.close()


def _pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _loaded(runtime: Runtime) -> bool:
    with runtime.store.reader() as session:
        state = session.get(SchedulerState, "main")
        return bool(state and state.config_loaded_at)


def test_a_broken_triggers_file_keeps_the_old_triggers(loop: Loop) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, poll_interval=0.1, reconcile_every=60)
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        wait_for(lambda: _loaded(runtime), "the triggers to load")
        good = loop.triggers.read_text()
        loop.triggers.write_text(good.replace("template: dataset_blogpost/training",
                                              "template: [broken"))
        os.utime(loop.triggers, (1, 1))  # a different mtime even within one second
        wait_for(lambda: _config_error(runtime), "the error to be recorded")
        assert str(loop.triggers) in str(_config_error(runtime))
        runtime.datasets.tag(loop.version(runtime), ["Production"])
        wait_for(lambda: tasks_of(runtime), "the old trigger to fire")
        assert loop.jobs() == [tasks_of(runtime)[0].id]
    finally:
        scheduler.stop()
        thread.join(10)
        runtime.close()


def _config_error(runtime: Runtime) -> str | None:
    with runtime.store.reader() as session:
        state = session.get(SchedulerState, "main")
        return state.config_error if state else None


def test_the_wakeup_fires_without_waiting_for_the_timed_poll(loop: Loop) -> None:
    runtime = Runtime()
    # A poll interval longer than the wait below: only the wake-up can make it in time.
    scheduler = Scheduler(runtime, loop.triggers, poll_interval=600, reconcile_every=600)
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        wait_for(lambda: _loaded(runtime), "the triggers to load")
        wait_for(lambda: scheduler.lease.leader() == scheduler.lease.holder, "the lease")
        version = loop.version(runtime)
        runtime.datasets.tag(version, ["Production"])
        wait_for(lambda: loop.jobs(), "the woken scheduler to fire", timeout=30)
        assert [t.parameters["General/dataset_id"] for t in tasks_of(runtime)] == [version]
    finally:
        scheduler.stop()
        thread.join(10)
        runtime.close()


def test_a_scheduler_that_stops_is_down_in_status_at_once(loop: Loop) -> None:
    """New-user pass: after a clean stop (`retrain up`, then Ctrl-C), `status` said the
    scheduler was alive for up to 30 s more (its last heartbeat was young). A scheduler that
    stops signs off in the store; one that is killed still ages out."""
    import json

    def scheduler() -> dict[str, object]:
        done = subprocess.run(retrain("status", "--json"), capture_output=True, text=True,
                              check=False)
        return dict(json.loads(done.stdout)["scheduler"])

    with daemon() as proc:
        wait_for(lambda: scheduler()["alive"], "the scheduler to lead", describe=scheduler)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    after = scheduler()
    assert after["alive"] is False and after["recorded_leader"] is None, after
    assert "stopped" in str(after["not_firing_reason"]), after
