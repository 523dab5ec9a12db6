"""`retrain scheduler` polls first: from exec to the first poll (its first health beat) it loads
nothing that poll does not use (the list in `orchestrator/cli/daemon_imports.py`), and that
first poll is a real one: the events past the cursor are read and decided."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from orchestrator.cli.daemon_imports import SCHEDULER_FIRST_POLL
from orchestrator.cli.imports import NOT_ON_SQLITE
from orchestrator.queue import keys
from orchestrator.runtime import Runtime
from tests.triggers.conftest import Loop, retrain

HARNESS = """
import json, os, signal, sys
import orchestrator.health as health
beat = health.beat
def first_beat(home, role, name, detail=None):
    beat(home, role, name, detail)
    if role == "scheduler" and not os.path.exists(os.environ["RETRAIN_TEST_MODULES"]):
        with open(os.environ["RETRAIN_TEST_MODULES"], "w") as f:
            json.dump({"modules": sorted(sys.modules), "detail": detail}, f)
        os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own stop: lease released, etc.
health.beat = first_beat
from orchestrator.cli import main
main()
"""


def _within(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_the_first_poll_comes_before_what_it_does_not_use(
    database_url: str, loop: Loop, tmp_path: Path
) -> None:
    # A scheduler ran before (its cursor is in the store); events arrived since, which the
    # trigger does not fire for (no Production tag): the next start reads and decides them.
    subprocess.run(
        retrain("scheduler", "--once", "--triggers", str(loop.triggers)), check=True, timeout=300
    )
    client = redis.Redis.from_url(loop.redis_url)
    try:  # `--once` gave its lease back: the daemon started next leads at once
        assert client.get(keys.SCHEDULER_LEASE) is None
    finally:
        client.close()
    runtime = Runtime()
    try:
        for name in ("a", "b", "c"):
            loop.version(runtime, name)
        cursor, newest = _cursor_and_newest(runtime)
    finally:
        runtime.close()
    assert newest > cursor

    report = tmp_path / "modules.json"
    env = {**os.environ, "RETRAIN_TEST_MODULES": str(report)}
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, "scheduler", "--triggers", str(loop.triggers)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(report.read_text())
    unwanted = set(SCHEDULER_FIRST_POLL)
    if database_url.startswith("sqlite"):
        unwanted |= NOT_ON_SQLITE
    loaded = sorted(u for u in unwanted if any(_within(m, u) for m in seen["modules"]))
    assert not loaded, f"loaded before the first poll: {', '.join(loaded)}"
    # The first poll was real: it led, fired from the file, and read every pending event.
    assert seen["detail"]["leader"] and seen["detail"]["firing"], seen["detail"]
    steps = {s["name"]: s for s in seen["detail"]["steps"]}
    assert steps["poll"]["failures"] == 0 and steps["poll"]["last_ok_at"], steps
    runtime = Runtime()
    try:
        assert _cursor_and_newest(runtime) == (newest, newest)
    finally:
        runtime.close()


def _cursor_and_newest(runtime: Runtime) -> tuple[int, int]:
    """The scheduler's cursor and the newest event's sequence number."""
    from orchestrator.scheduler.engine import STATE
    from orchestrator.store.events import last_sequence
    from orchestrator.store.models import SchedulerState

    with runtime.store.reader() as session:
        state = session.get(SchedulerState, STATE)
        assert state is not None
        return int(state.cursor), int(last_sequence(session))
