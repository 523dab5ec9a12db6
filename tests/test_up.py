"""`retrain up` as a user runs it: a real process with its scheduler, worker and (on the
embedded path) its own Redis; a tagged version runs to completion; Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from orchestrator.processes import alive
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, machine_redis_url, run_git
from tests.triggers.conftest import wait_for

git_repo = task_fixtures.git_repo

TRIGGERS = """\
version: 1
triggers:
  - name: retrain
    on: {dataset: {project: dataset_blogpost, tags: [Production], event: tagged}}
    run:
      template: dataset_blogpost/training
      overrides: {General/dataset_id: "${dataset.id}"}
"""

TRAIN = """\
import json, os, pathlib
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
print("trained on", os.environ["RETRAIN_PARAM_GENERAL_DATASET_ID"])
"""


@pytest.mark.parametrize("services", ["embedded", "machine"])
def test_up_runs_the_loop_and_ctrl_c_leaves_nothing_behind(
    cli: CLI, git_repo: Repo, tmp_path: Path, retrain_home: Path,
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, services: str,
) -> None:
    from orchestrator import health

    if services == "machine":  # the machine's Redis and PostgreSQL
        url = machine_redis_url()
        redis.Redis.from_url(url).flushdb()
        monkeypatch.setenv("RETRAIN_REDIS_URL", url)
        monkeypatch.setenv("RETRAIN_DATABASE_URL", request.getfixturevalue("postgres_url"))
    (git_repo.path / "train.py").write_text(TRAIN)
    run_git(git_repo.path, "commit", "-qam", "train")
    cli("task", "create", "--project", "dataset_blogpost", "--name", "training", "--repo",
        str(git_repo.path), "--script", "train.py", "--param", "General/dataset_id=")
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)

    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "up", "--gpus",
         "none"], env=os.environ.copy(), stdout=log, stderr=log, cwd=tmp_path)
    try:
        wait_for(lambda: health.check(retrain_home, "worker", 60)[0]
                 and health.check(retrain_home, "scheduler", 60)[0], "retrain up to start")
        state = json.loads((retrain_home / "up.json").read_text())
        pids = [c["pid"] for c in state["children"]]
        if services == "embedded":
            pids.append(json.loads((retrain_home / "redis.json").read_text())["pid"])
        assert [c["role"] for c in state["children"]] == ["scheduler", "worker"]
        assert state["embedded_redis"] is (services == "embedded")

        # A second `up` on the same home refuses, naming the first.
        second = subprocess.run(
            [sys.executable, "-c", "from orchestrator.cli import main; main()", "up"],
            env=os.environ.copy(), capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert second.returncode == 1
        assert f"already running for RETRAIN_HOME={retrain_home} (pid {proc.pid})" in \
            second.stderr

        # Another terminal: plain commands find the (embedded) Redis by themselves.
        version = cli("dataset", "create", "--project", "dataset_blogpost", "--name",
                      "occupancy").out.strip()
        cli("dataset", "close", "--id", version)
        cli("dataset", "tag", version, "Production")

        def completed() -> list[dict[str, object]]:
            rows = cli.json("task", "list", "--status", "completed")
            assert isinstance(rows, list)
            return rows

        [run] = wait_for(completed, "the triggered run to complete", timeout=90)  # type: ignore[misc]
        assert cli("logs", str(run["id"])).out == f"trained on {version}\n"
        status = cli.json("status")
        assert isinstance(status, dict)
        assert [(w["state"], w["task"]) for w in status["workers"]] == [("idle", None)]
        assert status["scheduler"]["alive"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert "retrain up: stopped" in output and "Traceback" not in output
    assert not [pid for pid in pids if alive(pid)], output  # scheduler, worker, Redis
    if services == "embedded":  # its banner names the embedded Redis, not its password
        assert "embedded, unix://" in output
        assert (retrain_home / "redis" / "password").read_text().strip() not in output
    assert not (retrain_home / "redis.json").exists()
    assert not (retrain_home / "up.json").exists()
    assert "no running worker" in cli("health", "worker", expect=1).err



def up_process(tmp_path: Path, *args: str, log: str = "up.log") -> subprocess.Popen[bytes]:
    """`retrain up --gpus all ARGS` in the background, its output in `tmp_path / log`."""
    with (tmp_path / log).open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from orchestrator.cli import main; main()", "up", *args],
            env=os.environ.copy(), stdout=out, stderr=out, cwd=tmp_path)


def fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> Path:
    """`count` fake GPUs (an `nvidia-smi` first on PATH) with a private lock directory."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    rows = "\\n".join(f"{i}, GPU-{i:08d}-fake, NVIDIA H200, 143771" for i in range(count))
    fake.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # this test's GPU locks, nobody else's
    return tmp_path / "retrain-gpu-locks"


def wait_up(home: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    """up.json once `proc` has started everything and its scheduler and workers beat."""
    from orchestrator import health

    wait_for(lambda: proc.poll() is not None or "retrain is up" in log.read_text(),
             "retrain up to start its children", timeout=120)
    assert proc.poll() is None, log.read_text()
    wait_for(lambda: health.check(home, "worker", 60)[0]
             and health.check(home, "scheduler", 60)[0], "retrain up to start", timeout=120)
    state = json.loads((home / "up.json").read_text())
    assert isinstance(state, dict) and state["pid"] == proc.pid
    return state


def everything_of(state: dict[str, object], home: Path) -> dict[int, str]:
    """Every process a running `up` stands for: its children, its guard, its embedded Redis."""
    children = state["children"]
    assert isinstance(children, list)
    pids = {int(c["pid"]): str(c["role"]) for c in children}
    guard = state.get("guard")
    if isinstance(guard, dict):
        pids[int(guard["pid"])] = "guard"
    pids[int(json.loads((home / "redis.json").read_text())["pid"])] = "redis"
    return pids


def stop(proc: subprocess.Popen[bytes], tmp_path: Path, log: str = "up.log") -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    code = proc.wait(120)
    output = (tmp_path / log).read_text()
    assert code == 0, output
    return output


def _state(pid: int) -> str:
    """A process's state letter and its parent, for a failure message."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return "gone"
    return f"state {fields[0]}, parent {fields[1]}"


@pytest.mark.timeout(600)
def test_a_killed_up_leaves_nothing_and_the_next_one_starts_cleanly(
    cli: CLI, tmp_path: Path, retrain_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`kill -9` of `up` (an OOM kill, a CI timeout): its scheduler, workers, guard and
    embedded Redis end by themselves, the GPU claims are free, and `up` starts again."""
    from workers.gpus import claim

    locks = fake_gpus(tmp_path, monkeypatch, 2)
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    proc = up_process(tmp_path, "--workers", "2")
    pids: dict[int, str] = {}
    try:
        state = wait_up(retrain_home, proc, tmp_path / "up.log")
        pids = everything_of(state, retrain_home)
        proc.kill()
        proc.wait(60)
        # They end by themselves through their lifelines, in seconds (issue 16 asks 10 s; seen
        # 3-5 s on a loaded machine). The bound is generous for a loaded machine, and still far
        # below every fallback that would hide a lifeline that failed: an idle worker's BLPOP
        # timeout (75 s), the second stage (ORPHAN_JOB_S) and the guard's patience.
        from orchestrator.lifeline import ORPHAN_JOB_S

        wait_for(lambda: not [p for p in pids if alive(p)],
                 "the children of a killed up to end", timeout=min(60.0, ORPHAN_JOB_S / 2),
                 describe=lambda: {p: (role, _state(p)) for p, role in pids.items() if alive(p)})
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:  # if they did not end by themselves, end them now
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert sorted(pids.values()) == ["guard", "redis", "scheduler", "worker", "worker"]
    output = (tmp_path / "up.log").read_text()
    assert "Traceback" not in output, output
    with claim((0,), locks), claim((1,), locks):  # raises DeviceBusy if a claim was kept
        pass
    assert not (retrain_home / "up.json").exists()  # the guard cleaned up after it

    again = up_process(tmp_path, "--workers", "2", log="again.log")
    pids = {}
    try:
        pids = everything_of(wait_up(retrain_home, again, tmp_path / "again.log"),
                             retrain_home)
    finally:
        output = stop(again, tmp_path, "again.log")
    assert "retrain up: stopped" in output and "Traceback" not in output
    assert "previous retrain up" not in output  # nothing was left to stop
    assert not [p for p in pids if alive(p)]


@pytest.mark.timeout(400)
def test_a_new_up_stops_the_orphans_of_a_dead_one_first(
    cli: CLI, tmp_path: Path, retrain_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Orphans that did not end by themselves (here: stopped with SIGSTOP, so their lifeline
    cannot act) are found through up.json by the next `up`, which says so and stops them."""
    locks = fake_gpus(tmp_path, monkeypatch, 1)
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    proc = up_process(tmp_path)
    old: dict[int, str] = {}
    try:
        state = wait_up(retrain_home, proc, tmp_path / "up.log")
        old = everything_of(state, retrain_home)
        for pid, role in old.items():
            if role != "redis":
                os.kill(pid, signal.SIGSTOP)
        proc.kill()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()

    again = up_process(tmp_path, log="again.log")
    try:
        wait_up(retrain_home, again, tmp_path / "again.log")
        assert not [p for p in old if alive(p)]
    finally:
        for pid in old:  # if the new `up` failed to, do not leave them stopped forever
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
        output = stop(again, tmp_path, "again.log")
    assert (f"retrain up: the previous retrain up of this home (pid {proc.pid}) died and "
            "left 4 process(es) running") in output, output
    assert "Traceback" not in output, output
    from workers.gpus import claim

    with claim((0,), locks):
        pass


WAITING = """\
import pathlib, sys, time
flag = pathlib.Path(sys.argv[1])
print("waiting for", flag, flush=True)
while not flag.exists():
    time.sleep(0.1)
print("done", flush=True)
"""


@pytest.mark.timeout(400)
def test_a_worker_whose_up_died_finishes_its_job_first(
    cli: CLI, git_repo: Repo, tmp_path: Path, retrain_home: Path,
) -> None:
    """`up` is killed while a job runs: the scheduler stops at once, the worker finishes the
    job (a first Ctrl-C) and then stops, the embedded Redis only after it; the next `up`
    applies the job's report: the run is completed, not lost or re-run."""
    flag = tmp_path / "finish"
    (git_repo.path / "train.py").write_text(WAITING)
    run_git(git_repo.path, "add", "train.py")
    run_git(git_repo.path, "commit", "-qm", "wait")
    cli("task", "create", "--project", "p", "--name", "waits", "--repo", str(git_repo.path),
        "--script", "train.py", "--args", str(flag))
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    proc = up_process(tmp_path, "--gpus", "none")
    pids: dict[int, str] = {}
    try:
        pids = everything_of(wait_up(retrain_home, proc, tmp_path / "up.log"), retrain_home)
        run = cli("task", "run", "p/waits").out.strip()
        wait_for(lambda: "waiting for" in cli("logs", run).out, "the job to start", 120)
        proc.kill()
        proc.wait(60)
        [scheduler] = [p for p, role in pids.items() if role == "scheduler"]
        [worker] = [p for p, role in pids.items() if role == "worker"]
        wait_for(lambda: not alive(scheduler), "the scheduler of a killed up to stop", 60)
        assert alive(worker)  # finishing its job, with Redis still there for its reports
        flag.touch()
        wait_for(lambda: not [p for p in pids if alive(p)], "the worker, then Redis, to stop",
                 120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    again = up_process(tmp_path, "--gpus", "none", log="again.log")
    try:
        wait_up(retrain_home, again, tmp_path / "again.log")
        wait_for(lambda: cli.json("task", "show", run)["status"] == "completed",  # type: ignore[index]
                 "the finished job's report to be applied", 120)
        log = cli("logs", run).out
        assert log.count("waiting for") == 1 and log.endswith("done\n"), log  # not run again
    finally:
        stop(again, tmp_path, "again.log")


def test_a_refused_up_starts_nothing(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retrain_home: Path
) -> None:
    """Too few GPUs for --workers is a mistake: one line, exit 2, and no embedded Redis (or
    anything else) left running."""
    from tests.conftest import started_here

    fake_gpus(tmp_path, monkeypatch, 2)
    monkeypatch.delenv("RETRAIN_REDIS_URL", raising=False)
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    said = cli("up", "--triggers", str(triggers), "--gpus", "0,1", "--workers", "3",
               expect=2).err
    assert "--workers 3" in said, said
    assert not (retrain_home / "redis.json").exists()
    assert started_here(tmp_path) == []


# Found by the adversarial pass on issue 16. A sitecustomize on PYTHONPATH reaches `up` and
# its children: it makes the named moments of start-up slow or stuck, so that what a slow
# machine does now and then happens every time.
SLOW = """\
import os, subprocess, sys, time
moment = os.environ.get("RETRAIN_TEST_SLOW", "")
if moment == "imports" and "worker" in sys.argv:
    # A worker that never finishes importing the CLI: only a lifeline held before the
    # imports can stop it when `up` dies.
    class Stuck:
        def find_spec(self, name, path=None, target=None):
            if name == "orchestrator.cli":
                open(os.environ["RETRAIN_TEST_SLOW_MARK"], "w").close()
                time.sleep(3600)
    sys.meta_path.insert(0, Stuck())
if moment == "start" and "up" in sys.argv:
    # `up` takes 3 s to start each worker: a Ctrl-C comes in between.
    real = subprocess.Popen.__init__
    def slow(self, args, *rest, **kwargs):
        if "worker" in args:
            open(os.environ["RETRAIN_TEST_SLOW_MARK"], "w").close()
            time.sleep(3)
        real(self, args, *rest, **kwargs)
    subprocess.Popen.__init__ = slow
"""


def slowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("RETRAIN_TEST_SLOW", moment)
    mark = tmp_path / "slow.mark"
    monkeypatch.setenv("RETRAIN_TEST_SLOW_MARK", str(mark))
    return mark


@pytest.mark.timeout(400)
def test_a_child_killed_up_dies_even_while_it_imports(
    cli: CLI, tmp_path: Path, retrain_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lifeline is held before the CLI is imported (seconds on a loaded machine): an
    `up` killed then takes its children with it, not after the guard's patience."""
    fake_gpus(tmp_path, monkeypatch, 1)
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    mark = slowed(tmp_path, monkeypatch, "imports")
    proc = up_process(tmp_path)
    pids: dict[int, str] = {}
    try:
        wait_for(lambda: mark.exists() and "retrain is up" in (tmp_path / "up.log").read_text(),
                 "the worker to be stuck in its imports", timeout=120)
        state = json.loads((retrain_home / "up.json").read_text())
        pids = {int(c["pid"]): str(c["role"]) for c in state["children"]}
        proc.kill()
        proc.wait(60)
        from orchestrator.lifeline import ORPHAN_JOB_S

        wait_for(lambda: not [p for p, role in pids.items() if alive(p)],
                 "the stuck worker to end with its up", timeout=min(60.0, ORPHAN_JOB_S / 2),
                 describe=lambda: {p: (r, _state(p)) for p, r in pids.items() if alive(p)})
    finally:
        for pid in [*pids, proc.pid]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        _stop_guard_and_redis(retrain_home)


@pytest.mark.timeout(400)
def test_ctrl_c_while_up_starts_its_workers_stops_everything(
    cli: CLI, tmp_path: Path, retrain_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Ctrl-C between two starts: `up` starts no more, stops what it started, exits 0."""
    fake_gpus(tmp_path, monkeypatch, 2)
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    mark = slowed(tmp_path, monkeypatch, "start")
    proc = up_process(tmp_path, "--workers", "2")
    try:
        wait_for(mark.exists, "up to start its first worker", timeout=120)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()  # it hung: what it started is stopped by its guard
        _stop_guard_and_redis(retrain_home)
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert "retrain up: stopped" in output and "retrain is up" not in output, output
    assert not (retrain_home / "up.json").exists()


def _stop_guard_and_redis(home: Path) -> None:
    """What a failed test leaves: the guard, and the embedded Redis (its harness stops it)."""
    state = json.loads((home / "up.json").read_text()) if (home / "up.json").exists() else {}
    guard = state.get("guard") if isinstance(state, dict) else None
    if isinstance(guard, dict) and alive(int(guard["pid"])):
        os.kill(int(guard["pid"]), signal.SIGKILL)


def test_a_failed_start_leaves_no_redis_running(
    cli: CLI, tmp_path: Path, retrain_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that cannot be opened, found after the embedded Redis started: a one-line
    error, exit 2, and the Redis this `up` started is stopped again."""
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    monkeypatch.setenv("RETRAIN_DATABASE_URL", "sqlite:////proc/no-such-dir/x.db")
    result = cli("up", "--gpus", "none", expect=2)
    assert "Traceback" not in result.err, result.err
    assert "RETRAIN_DATABASE_URL" in result.err, result.err
    assert not (retrain_home / "redis.json").exists(), "the embedded Redis was left running"
    assert not (retrain_home / "up.json").exists()


def test_up_json_never_gets_a_process_signalled_that_it_cannot_prove_is_its_own(
    tmp_path: Path, retrain_home: Path,
) -> None:
    """Entries without a start time (or pid 1) are named, never signalled: the pid may belong
    to anyone by now. Entries whose start time matches are stopped."""
    from orchestrator import reaper
    from orchestrator.processes import started_at

    retrain_home.mkdir(parents=True)
    foreign = subprocess.Popen(["sleep", "600"], start_new_session=True)
    ours = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        wait_for(lambda: started_at(ours.pid), "the sleeps to start")
        (retrain_home / "up.json").write_text(json.dumps({
            "pid": 999999,
            "children": [
                {"role": "worker", "pid": foreign.pid, "start": None},
                {"role": "scheduler", "pid": ours.pid, "start": started_at(ours.pid)},
            ],
            "guard": {"role": "guard", "pid": 1, "start": None},
        }))
        said: list[str] = []
        reaper.stop_orphans(retrain_home, said.append)
        assert ours.wait(60) is not None
        assert foreign.poll() is None, "a process up.json cannot prove is its own was killed"
        assert said and f"scheduler pid {ours.pid}" in said[0]
        assert "guard" not in said[0]  # pid 1, recorded without a start time
    finally:
        for proc in (foreign, ours):
            proc.kill()
            proc.wait()


def test_an_unreadable_up_json_is_reported_and_kept(
    tmp_path: Path, retrain_home: Path,
) -> None:
    from orchestrator import reaper

    retrain_home.mkdir(parents=True)
    (retrain_home / "up.json").write_text('{"pid": 12, "children": [')
    said: list[str] = []
    reaper.stop_orphans(retrain_home, said.append)
    assert said and "up.json" in said[0] and "cannot be read" in said[0], said
    assert (retrain_home / "up.json.unreadable").read_text() == '{"pid": 12, "children": ['


@pytest.mark.timeout(400)
def test_a_dead_guard_is_replaced_and_a_dead_redis_stops_up(
    cli: CLI, tmp_path: Path, retrain_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the adversarial pass on issue 16: with its guard killed, a later death of `up`
    left the embedded Redis running; with its Redis killed (or `retrain redis stop`), `up` ran
    on with children that could do nothing. Now the guard is replaced, and a Redis that dies
    stops everything, saying so."""
    fake_gpus(tmp_path, monkeypatch, 1)
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    proc = up_process(tmp_path)
    pids: dict[int, str] = {}
    try:
        state = wait_up(retrain_home, proc, tmp_path / "up.log")
        pids = everything_of(state, retrain_home)
        old_guard = int(state["guard"]["pid"])  # type: ignore[index]
        os.kill(old_guard, signal.SIGKILL)

        def new_guard() -> int:
            guard = json.loads((retrain_home / "up.json").read_text())["guard"]
            return int(guard["pid"]) if guard and int(guard["pid"]) != old_guard else 0

        guard = int(wait_for(new_guard, "up to start a new guard", timeout=60))  # type: ignore[arg-type]
        assert alive(guard)
        pids[guard] = "guard"
        redis_pid = next(p for p, role in pids.items() if role == "redis")
        os.kill(redis_pid, signal.SIGKILL)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    output = (tmp_path / "up.log").read_text()
    assert code == 1, output
    assert f"its guard (pid {old_guard}) exited; starting a new one" in output
    assert f"the embedded Redis (pid {redis_pid}) exited; stopping everything" in output
    assert "retrain up: stopped" in output
    wait_for(lambda: not [p for p in pids if alive(p)], "everything to end", timeout=60,
             describe=lambda: {p: (r, _state(p)) for p, r in pids.items() if alive(p)})


def test_redis_stop_refuses_while_up_uses_it(cli: CLI, retrain_home: Path) -> None:
    """New-user pass: `retrain redis stop` while `up` ran took the whole `up` down with
    connection tracebacks, without a word. It refuses now (exit 2, one line), unless --force."""
    from filelock import FileLock

    from orchestrator.queue.connection import embedded_url
    from orchestrator.settings import Settings

    assert embedded_url(Settings.load(), start=True)
    lock = FileLock(str(retrain_home / "up.lock"))  # what a running `up` holds
    lock.acquire(timeout=5)
    try:
        err = cli("redis", "stop", expect=2).err
        assert err.startswith("retrain: error: ") and err.count("\n") == 1, err
        assert "retrain up is running" in err and "--force" in err, err
        assert embedded_url(Settings.load(), start=False)  # still running
        cli("redis", "stop", "--force")
        assert embedded_url(Settings.load(), start=False) is None
    finally:
        lock.release()
