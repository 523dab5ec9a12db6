"""A run's output through a real worker: stdout and stderr in the order they were written,
live (Redis) and stored (`output.log`), and `retrain logs -f` ending as the run ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from orchestrator.queue import keys
from orchestrator.runtime import Runtime
from orchestrator.scheduler.ingest import Ingest
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, machine_redis_url, run_git

git_repo = task_fixtures.git_repo

LINES = 200
TRAIN = f"""\
import sys
import threading
for i in range({LINES}):
    print(f"out{{i}}", flush=True)
    print(f"err{{i}}", file=sys.stderr, flush=True)
sys.exit(int(sys.argv[1]))
"""
EXPECTED = [line for i in range(LINES) for line in (f"out{i}", f"err{i}")]


@pytest.fixture
def project(cli: CLI, git_repo: Repo, database_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    (git_repo.path / "train.py").write_text(TRAIN)
    (git_repo.path / "requirements.txt").write_text("# nothing to install\n")
    run_git(git_repo.path, "commit", "-qam", "interleaved output")
    cli("task", "create", "--project", "logs", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "logs",
        "--param", "General/code=0", "--args", "${params.General/code}")
    yield client
    client.flushdb()
    client.close()


def run_worker() -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "logs", "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    # Off a terminal, the worker's own log (RQ's lines included) is one JSON object a line.
    assert [json.loads(line)["level"] for line in done.stderr.splitlines()], done.stderr
    assert not done.stdout.strip(), done.stdout
    return done


def ingest(client: redis.Redis) -> None:
    runtime = Runtime()
    Ingest(client, runtime.tasks, runtime.models, "test").step()
    runtime.close()


def test_stdout_and_stderr_keep_their_order_live_and_stored(
    cli: CLI, project: redis.Redis
) -> None:
    run = cli("task", "run", "logs/train").out.strip()
    run_worker()
    # Not ingested yet: the store says queued, so the log comes from Redis, as it streamed.
    assert cli("logs", run).out.splitlines() == EXPECTED
    ingest(project)
    project.delete(keys.logs_stream(run))  # the live log expired: what was stored is all
    assert cli("task", "show", run, "--json").out.count('"output.log"') == 1
    assert cli("logs", run).out.splitlines() == EXPECTED


@pytest.mark.parametrize(("code", "status", "exit_code"), [(3, "failed", 1), (0, "completed", 0)])
def test_follow_on_a_finished_run_ends_like_a_live_follow(
    cli: CLI, project: redis.Redis, code: int, status: str, exit_code: int
) -> None:
    run = cli("task", "run", "logs/train", "--param", f"General/code={code}").out.strip()
    # Live: the worker's end entry makes the follow ask the store, which says how it ended
    # once the scheduler took the worker's report (an end entry alone is anyone's to forge).
    run_worker()
    follower = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "logs", run, "-f"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(3)
        assert follower.poll() is None, follower.communicate()  # the store says queued
        ingest(project)
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == exit_code, err
    assert out.splitlines() == EXPECTED
    assert f"task {run} ended: {status}" in err
    # Finished and stored: the same ending, the same exit code.
    assert cli.json("task", "show", run)["status"] == status
    stored = cli("logs", run, "-f", expect=exit_code)
    assert stored.out.splitlines() == EXPECTED
    assert f"task {run} ended: {status}" in stored.err
    # Without -f, printing a log is all that is asked: it succeeds whatever the run did.
    assert cli("logs", run, "--tail", "2").out.splitlines() == EXPECTED[-2:]


def test_a_follower_outlives_a_dropped_redis_connection(cli: CLI, project: redis.Redis) -> None:
    """`logs -f` on a long run keeps following when Redis drops its connection (a restart, a
    proxy's idle timeout): the client reconnects and reads on from where it was."""
    run = cli("task", "run", "logs/train").out.strip()  # queued: nothing runs it
    db = str(project.connection_pool.connection_kwargs.get("db") or 0)
    follower = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "logs", run, "-f"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def blocked() -> list[str]:
            return [c["id"] for c in project.client_list()
                    if c.get("cmd") == "xread" and str(c.get("db")) == db]

        for _ in range(1200):  # the follower is waiting in XREAD (two minutes at most)
            if blocked() or follower.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert blocked(), follower.communicate(timeout=10)
        for client_id in blocked():
            project.client_kill_filter(_id=client_id)
        project.xadd(keys.logs_stream(run), {"stream": "stdout", "line": "after the drop"})
        cli("task", "abort", run)  # how it ends is the store's to say
        out, err = follower.communicate(timeout=120)
    finally:
        follower.kill()
        follower.wait()
    assert out.splitlines() == ["after the drop"], err
    assert follower.returncode == 1 and f"task {run} ended: aborted" in err, err
