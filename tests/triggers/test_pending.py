"""Events past the cursor are pending, never history: replay, new triggers, and firings that
cannot start, against real Redis and real stores."""

from __future__ import annotations

import re

from sqlalchemy import select

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.scheduler.engine import Engine
from orchestrator.store.models import Event, SchedulerState, Task, TriggerFiring
from orchestrator.triggers.config import load_config
from tests.tasks.conftest import Repo
from tests.test_status import SCHEMA, conforms
from tests.triggers.conftest import Loop

NAME = "retrain-on-production-data"
LONG_AGO = "2000-01-01T00:00"


def fired_for(runtime: Runtime) -> dict[str, str]:
    """dataset version id -> the run a trigger started for it."""
    with runtime.store.reader() as session:
        tasks = session.scalars(select(Task).where(Task.trigger_name == NAME))
        return {t.parameters["General/dataset_id"]: t.id for t in tasks}


def cursor(runtime: Runtime) -> int:
    with runtime.store.reader() as session:
        state = session.get(SchedulerState, "main")
        return state.cursor if state else 0


def newest_event(runtime: Runtime) -> int:
    with runtime.store.reader() as session:
        return int(session.scalar(select(Event.seq).order_by(Event.seq.desc()).limit(1)) or 0)


def test_replay_takes_only_events_the_cursor_passed_and_polls_go_on(
    loop: Loop, database_url: str
) -> None:
    runtime = Runtime()
    history = loop.version(runtime, "history")
    runtime.datasets.tag(history, ["Production"])  # before any scheduler: history
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    pending = [loop.version(runtime, f"pending-{i}") for i in range(2)]
    for version in pending:
        runtime.datasets.tag(version, ["Production"])  # past the cursor: the poll's to decide

    preview = loop.cli("triggers", "replay", NAME, "--since", LONG_AGO)
    assert "1 event(s) would fire" in preview.err
    done = loop.cli("triggers", "replay", NAME, "--since", LONG_AGO, "--yes")
    assert "replayed 1 event(s): 1 fired" in done.err
    assert list(fired_for(runtime)) == [history]

    # The poll decides the pending events itself: no clash with the replay, no retry.
    result = Engine(runtime.store, runtime.tasks).poll(load_config(loop.triggers))
    assert not result.conflict
    assert sorted(fired_for(runtime)) == sorted([history, *pending])
    later = loop.version(runtime, "later")
    runtime.datasets.tag(later, ["Production"])
    assert scheduler.tick().fired == 1 and later in fired_for(runtime)
    runtime.close()


def test_a_decision_already_in_the_ledger_is_a_duplicate_not_a_race(
    loop: Loop, database_url: str
) -> None:
    """A database left by the old replay holds decisions past the cursor: the poll must count
    them as decided and go on, instead of retrying the same batch forever."""
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    first, second = loop.version(runtime, "first"), loop.version(runtime, "second")
    runtime.datasets.tag(first, ["Production"])
    clash = newest_event(runtime)
    runtime.datasets.tag(second, ["Production"])
    last = newest_event(runtime)
    config = load_config(loop.triggers)
    with runtime.store.session() as session:
        session.add(TriggerFiring(trigger_name=NAME, trigger_revision=config.revisions[NAME],
                                  event_seq=clash, entity_id=first, decision="skipped",
                                  reason="decided by an older replay"))
    result = Engine(runtime.store, runtime.tasks).poll(config)
    assert not result.conflict
    assert result.cursor == last == cursor(runtime)
    assert [(d.event, d.decision) for d in result.decisions if d.event == clash] == [
        (clash, "already decided")]
    assert list(fired_for(runtime)) == [second]
    runtime.close()


def test_replay_preview_counts_exactly_what_replay_fires(loop: Loop, database_url: str) -> None:
    runtime = Runtime()
    a, b = loop.version(runtime, "a"), loop.version(runtime, "b")
    runtime.datasets.tag(a, ["Production"])
    runtime.datasets.tag(b, ["Production"])
    runtime.datasets.untag(a, ["Production"])
    runtime.datasets.tag(a, ["Production"])  # a second matching event of the same version
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()

    preview = loop.cli("triggers", "replay", NAME, "--since", LONG_AGO)
    assert "2 event(s) would fire" in preview.err and "1 duplicate" in preview.err
    assert len(re.findall(r"\bduplicate of event\b", preview.out)) == 1
    assert fired_for(runtime) == {}  # a preview writes nothing
    done = loop.cli("triggers", "replay", NAME, "--since", LONG_AGO, "--yes")
    assert "2 fired, 1 skipped" in done.err
    assert sorted(fired_for(runtime)) == sorted([a, b])
    again = loop.cli("triggers", "replay", NAME, "--since", LONG_AGO)
    assert "0 event(s) would fire" in again.err
    runtime.close()


def test_a_trigger_new_to_the_file_sees_every_event_its_scheduler_has_not_processed(
    loop: Loop, database_url: str
) -> None:
    good = loop.triggers.read_text()
    loop.triggers.write_text(good.replace(f"name: {NAME}", "name: other")
                             .replace("[Production]", "[Staging]"))
    runtime = Runtime()
    before = Scheduler(runtime, loop.triggers, reconcile_every=0)
    before.reload(force=True)
    before.tick()  # the scheduler ran before, with another trigger
    before.lease.release()
    start = cursor(runtime)
    assert start > 0
    # The scheduler is down (or crash-looping) while versions are tagged and the new trigger
    # is added: these events are past its cursor, so the new trigger must see them.
    versions = [loop.version(runtime, f"v{i}") for i in range(3)]
    for version in versions:
        runtime.datasets.tag(version, ["Production"])
    loop.triggers.write_text(good)
    after = Scheduler(runtime, loop.triggers, reconcile_every=0)
    after.reload(force=True)
    assert after.tick().fired == 3
    assert sorted(fired_for(runtime)) == sorted(versions)
    [row] = [r for r in loop.cli.json("triggers", "list") if r["name"] == NAME]
    assert row["start_seq"] == start and row["started_at"]
    # New-user pass, round 2: times in JSON end in Z, as in task show and history.
    assert row["started_at"].endswith("Z") and row["last_fired"].endswith("Z")
    assert "since event" in loop.cli("triggers", "list").out
    runtime.close()


def test_a_firing_that_cannot_start_waits_and_fires_once_its_template_exists(
    loop: Loop, database_url: str, git_repo: Repo
) -> None:
    loop.triggers.write_text(loop.triggers.read_text().replace(
        "template: dataset_blogpost/training", "template: dataset_blogpost/evaluate"))
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    versions = [loop.version(runtime, f"v{i}") for i in range(2)]
    for version in versions:
        runtime.datasets.tag(version, ["Production"])
    assert scheduler.tick().fired == 0
    history = loop.cli.json("history", "--trigger", NAME)
    assert [h["decision"] for h in history] == ["error", "error"]
    assert all("cannot start" in h["reason"] and "evaluate" in h["reason"] for h in history)
    status = loop.cli.json("status")
    conforms(status, SCHEMA)
    [waiting] = status["waiting"]
    assert waiting["trigger"] == NAME and "evaluate" in waiting["reason"]
    assert [e["entity"] for e in waiting["events"]] == versions
    assert "cannot start" in loop.cli("status").out

    loop.cli("task", "create", "--project", "dataset_blogpost", "--name", "evaluate",
             "--repo", str(git_repo.path), "--script", "train.py", "--queue", "gpu",
             "--param", "General/dataset_id=", "General/note=")
    scheduler.tick()
    assert sorted(fired_for(runtime)) == sorted(versions)
    assert sorted(loop.jobs()) == sorted(fired_for(runtime).values())
    assert loop.cli.json("status")["waiting"] == []
    scheduler.reload(force=True)
    scheduler.tick()  # decided once: a later retry pass finds nothing waiting
    assert len(fired_for(runtime)) == 2
    decisions = [h["decision"] for h in loop.cli.json("history", "--trigger", NAME)]
    assert decisions == ["fired", "fired"]
    runtime.close()


def test_a_firing_that_cannot_start_fires_once_the_triggers_file_is_fixed(
    loop: Loop, database_url: str
) -> None:
    good = loop.triggers.read_text()
    loop.triggers.write_text(good.replace("template: dataset_blogpost/training",
                                          "template: dataset_blogpost/typo"))
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    version = loop.version(runtime)
    runtime.datasets.tag(version, ["Production"])
    scheduler.tick()
    assert fired_for(runtime) == {}
    loop.triggers.write_text(good)
    assert scheduler.reload(force=True)
    scheduler.tick()
    assert list(fired_for(runtime)) == [version]
    runtime.close()


def test_a_waiting_firing_fires_by_replay_and_then_never_again(
    loop: Loop, database_url: str, git_repo: Repo
) -> None:
    loop.triggers.write_text(loop.triggers.read_text().replace(
        "template: dataset_blogpost/training", "template: dataset_blogpost/evaluate"))
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    version = loop.version(runtime)
    runtime.datasets.tag(version, ["Production"])
    scheduler.tick()
    assert [h["decision"] for h in loop.cli.json("history", "--trigger", NAME)] == ["error"]
    loop.cli("task", "create", "--project", "dataset_blogpost", "--name", "evaluate",
             "--repo", str(git_repo.path), "--script", "train.py", "--queue", "gpu",
             "--param", "General/dataset_id=", "General/note=")
    preview = loop.cli("triggers", "replay", NAME, "--since", LONG_AGO)
    assert "1 event(s) would fire" in preview.err
    assert "replayed 1 event(s): 1 fired" in loop.cli(
        "triggers", "replay", NAME, "--since", LONG_AGO, "--yes").err
    [task_id] = fired_for(runtime).values()
    assert loop.jobs() == [task_id]
    scheduler.reload(force=True)
    scheduler.tick()  # the template's event and a forced retry pass: nothing left to fire
    assert list(fired_for(runtime).values()) == [task_id]
    assert [h["decision"] for h in loop.cli.json("history", "--trigger", NAME)] == ["fired"]
    runtime.close()


def test_a_waiting_firing_of_a_trigger_removed_from_the_file_is_decided_and_shown_no_more(
    loop: Loop, database_url: str
) -> None:
    """Removing a trigger whose firings wait decides them (skipped, saying why) instead of
    listing them in `retrain status` forever with a replay hint that cannot work."""
    good = loop.triggers.read_text()
    loop.triggers.write_text(good.replace("template: dataset_blogpost/training",
                                          "template: dataset_blogpost/typo"))
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    runtime.datasets.tag(loop.version(runtime), ["Production"])
    scheduler.tick()
    assert [w["trigger"] for w in loop.cli.json("status")["waiting"]] == [NAME]  # type: ignore[index]
    loop.triggers.write_text("version: 1\ntriggers: []\n")
    assert scheduler.reload(force=True)
    scheduler.tick()
    assert loop.cli.json("status")["waiting"] == []  # type: ignore[index]
    with runtime.store.reader() as session:
        [firing] = session.scalars(select(TriggerFiring).where(
            TriggerFiring.trigger_name == NAME))
        assert firing.decision == "skipped" and "removed from the triggers file" in firing.reason
    runtime.close()
