"""A Redis outage while a job runs (a restart, a failover): the worker and its job go on, and
the run's end reaches the scheduler once Redis is back (new-user pass: a 20 s outage killed a
standalone worker, with its running job, and the finished run was recorded as lost)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.queue import keys
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

WAITER = """\
import pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
(marks / "started").write_text("yes")
deadline = time.monotonic() + 240
while not (marks / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.2)
print("done", flush=True)
"""


class Server:
    """A redis-server of the test's own, which it stops and starts again on the same port
    with its data (append-only file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()  # SIGTERM: redis-server writes its data and exits
        self.proc.wait(timeout=60)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    (tmp_path / "redis").mkdir()
    own = Server(tmp_path / "redis")
    own.start()
    monkeypatch.setenv("RETRAIN_REDIS_URL", own.url)
    try:
        yield own
    finally:
        if own.proc is not None and own.proc.poll() is None:
            own.stop()


@pytest.mark.parametrize("back", ["before the run ends", "after the run ended"])
def test_a_redis_outage_while_a_job_runs_spares_the_worker_and_the_run(
    cli: CLI, git_repo: Repo, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    back: str,
) -> None:
    monkeypatch.setenv("RETRAIN_HEARTBEAT_TTL_S", "6")  # the worker beats every 2 s
    marks = tmp_path / "marks"
    marks.mkdir()
    (git_repo.path / "train.py").write_text(WAITER)
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "waiter")
    cli("task", "create", "--project", "p", "--name", "wait", "--repo", str(git_repo.path),
        "--script", "train.py", "--queue", "gpu", "--args", str(marks))
    run = cli("task", "run", "p/wait").out.strip()
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst", "--sandbox-write", str(marks)],
        env=os.environ.copy(), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not (marks / "started").exists():
            assert worker.poll() is None and time.monotonic() < deadline, "no job started"
            time.sleep(0.1)
        server.stop()
        time.sleep(6)  # several of the worker's beats and the job's heartbeats fail
        if back == "after the run ended":  # its end is reported while Redis is down
            (marks / "go").write_text("now")
            time.sleep(6)
        server.start()
        (marks / "go").write_text("now")
        assert worker.wait(timeout=180) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
    client = redis.Redis.from_url(server.url)
    ends = [json.loads(fields[b"data"]) for _id, fields in client.xrange(keys.REPORTS_STREAM)
            if json.loads(fields[b"data"])["kind"] == "finished"]
    client.close()
    assert [(e["task_id"], e["status"]) for e in ends] == [(run, "completed")], ends


def test_an_outage_longer_than_the_report_retries_spares_the_worker(
    cli: CLI, git_repo: Repo, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past its retries (a minute at least) the job gives its end up and its work horse
    exits with an error; RQ then asked Redis, still away, about the job, and the worker
    quit on the error ("found an unhandled exception, quitting"), with exit code 0 at that
    (attacker pass 3). The worker now waits for Redis and takes the next job; the run that
    ended unreported is the scheduler's to settle as lost."""
    monkeypatch.setenv("RETRAIN_HEARTBEAT_TTL_S", "6")
    marks = tmp_path / "marks"
    marks.mkdir()
    (git_repo.path / "train.py").write_text(WAITER)
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "waiter")
    cli("task", "create", "--project", "p", "--name", "wait", "--repo", str(git_repo.path),
        "--script", "train.py", "--queue", "gpu", "--args", str(marks))
    first = cli("task", "run", "p/wait").out.strip()
    second = cli("task", "run", "p/wait").out.strip()
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst", "--sandbox-write", str(marks)],
        env=os.environ.copy(), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not (marks / "started").exists():
            assert worker.poll() is None and time.monotonic() < deadline, "no job started"
            time.sleep(0.1)
        server.stop()
        (marks / "go").write_text("now")  # the first run ends while Redis is away
        time.sleep(75)  # past the job's retries (60 s with this TTL)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        server.start()
        assert worker.wait(timeout=180) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
    shown = (tmp_path / "worker.log").read_text()
    assert "quitting..." not in shown, shown
    client = redis.Redis.from_url(server.url)
    ends = [json.loads(fields[b"data"]) for _id, fields in client.xrange(keys.REPORTS_STREAM)
            if json.loads(fields[b"data"])["kind"] == "finished"]
    client.close()
    assert [(e["task_id"], e["status"]) for e in ends] == [(second, "completed")], (first, ends)
