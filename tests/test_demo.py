"""`python -m orchestrator.demo` (`make demo`), the newcomer's first command, end to end for
real: a git repository, `retrain up` with the embedded Redis, two dataset versions, two
trainings in one cached environment, chained evaluations, then nothing left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.processes import alive
from tests.conftest import CLI, started_here
from tests.triggers.conftest import wait_for

DEMO_S = 400
"""The demo's allowance: two cold-and-warm rounds of training and evaluation on a busy machine."""


def run_demo(
    log: Path,
    timeout: float,
    until: Callable[[], bool] | None = None,
    then: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> int | None:
    """`python -m orchestrator.demo` with this test's home, its output in `log`. Its exit code,
    or None when it ran past `timeout`, or when `until` came true and there is no `then` to
    do to it (after which it may take 120 s more to exit). Whenever None is returned, or this
    test ends otherwise, its whole process group (the demo and its `retrain up`) is killed."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.demo"],
            env=dict(os.environ),  # RETRAIN_HOME is this test's home, so the demo keeps it
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # a group of its own, to be killed as one
        )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if until is not None and until():
                if then is None:
                    return None
                then(proc)
                until, deadline = None, min(deadline, time.monotonic() + 120)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        return proc.returncode
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# pytest's own limit covers the demo's allowance, so the demo is stopped by run_demo, in order.
@pytest.mark.timeout(DEMO_S + 120)
def test_the_demo_runs_the_whole_loop(
    retrain_home: Path, cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the demo's folder, inside this test's
    code = run_demo(tmp_path / "demo.log", DEMO_S)
    output = (tmp_path / "demo.log").read_text()
    assert code is not None, f"the demo ran past {DEMO_S} s:\n{output}"
    assert code == 0, output
    assert "Traceback" not in output

    # What the demo printed is what the store holds.
    runs = cli.json("task", "list", "--project", "dataset_blogpost", "--tag", "auto")
    assert isinstance(runs, list)
    assert sorted((r["name"], r["status"]) for r in runs) == [
        ("evaluation", "completed"), ("evaluation", "completed"),
        ("training", "completed"), ("training", "completed")]
    shown = {r["id"]: cli.json("task", "show", r["id"]) for r in runs}
    trainings = sorted((s for s in shown.values() if s["name"] == "training"),
                       key=lambda s: s["created_at"])
    versions = [s["parameters"]["General/dataset_id"] for s in trainings]
    labels = [cli.json("dataset", "show", v)["version"]["version"] for v in versions]
    assert labels == ["1.0.0", "1.0.1"]
    second = cli.json("dataset", "show", versions[1])
    assert second["version"]["parents"] == [versions[0]]
    assert second["version"]["tags"] == ["Production"]

    # One environment: built for the first training, a cache hit for every later run.
    environments = [s["environment"] for s in sorted(shown.values(),
                                                     key=lambda s: s["created_at"])]
    assert environments[0]["hit"] is False
    assert all(e["hit"] is True for e in environments[1:]), environments
    assert len({e["key"] for e in environments}) == 1

    # Each model registered by a training started an evaluation on the data it learned from.
    models = cli.json("model", "list", "--project", "dataset_blogpost")
    assert isinstance(models, list) and len(models) == 2
    for training in trainings:
        [model] = [m for m in models if m["task_id"] == training["id"]]
        [evaluation] = [s for s in shown.values() if s["name"] == "evaluation"
                        and s["parameters"]["General/model_uri"] == model["uri"]]
        assert evaluation["parameters"]["General/dataset_id"] == \
            training["parameters"]["General/dataset_id"]
        assert 0.8 < training["metrics"]["accuracy"] < 1.0
        assert 0.8 < evaluation["metrics"]["eval_accuracy"] <= 1.0
        # The table row for this training shows its accuracy and model.
        row = re.search(rf"^occupancy \d\.\d\.\d +{training['id'][:12]} +"
                        rf"{training['metrics']['accuracy']:.3f} +occupancy {model['id'][:8]}",
                        output, re.MULTILINE)
        assert row, output
    assert "cache hit" in output and "built in" in output
    assert "recent firings" in output  # `retrain status` was left on screen

    # `retrain up` stopped: no daemon of this home is left.
    assert not (retrain_home / "up.json").exists()
    assert not (retrain_home / "redis.json").exists()
    assert "no running worker" in cli("health", "worker", expect=1).err
    assert "no running scheduler" in cli("health", "scheduler", expect=1).err


def running(home: Path) -> Callable[[], bool]:
    """Whether the demo's `retrain up` runs, with a worker."""
    from orchestrator import health

    return lambda: (home / "up.json").exists() and health.check(home, "worker", 60)[0]


@pytest.mark.timeout(400)
def test_a_demo_killed_mid_run_leaves_nothing_behind(
    retrain_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo's process group is killed while its `retrain up` runs (a CI timeout): `up`,
    its scheduler, its worker, its guard and its embedded Redis all end."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the demo's folder, inside this test's
    assert run_demo(tmp_path / "demo.log", 300, until=running(retrain_home)) is None
    state = json.loads((retrain_home / "up.json").read_text())
    pids = [state["pid"], *(c["pid"] for c in state["children"])]
    # A worker whose `up` died finishes its running job first (the demo's training, maybe
    # still building its environment), for up to ORPHAN_JOB_S; then hands it back.
    from orchestrator.lifeline import ORPHAN_JOB_S

    wait_for(lambda: not [p for p in pids if alive(p)], "the killed demo's up to end",
             ORPHAN_JOB_S + 60)
    wait_for(lambda: not started_here(tmp_path), "every process of the demo to end", 120)


@pytest.mark.timeout(400)
def test_a_demo_terminated_mid_run_stops_up_and_cleans_up(
    retrain_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM to the demo alone (a CI runner's polite stop): it stops its `retrain up` in
    order, removes its folder and exits 143, as after Ctrl-C."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code = run_demo(tmp_path / "demo.log", 300, until=running(retrain_home),
                    then=lambda proc: proc.send_signal(signal.SIGTERM))
    output = (tmp_path / "demo.log").read_text()
    assert code == 143, output
    assert "Traceback" not in output, output
    assert not list(tmp_path.glob("retrain-demo-*")), output
    assert not (retrain_home / "up.json").exists()
    wait_for(lambda: not started_here(tmp_path), "every process of the demo to end", 120)
