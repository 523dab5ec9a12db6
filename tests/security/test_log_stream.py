"""Promise 5: a job's live log in Redis is bounded in bytes and expires even if its worker
dies. A job can print anything: 24 MB of long lines must not become 25 MB of Redis memory,
and a stream must carry its expiry from its first line, not only from the run's end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from orchestrator.queue import keys
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git
from workers.job import LOG_LINE_MAX_BYTES, LOG_STREAM_MAX_BYTES

git_repo = task_fixtures.git_repo

FLOOD = """\
import os, sys, time
for i in range(100):  # long lines: cut in the live log
    print(i, "x" * 65536)
for i in range(1100):  # 17.6 MB more: past the live log's cap
    print("y" * 16000)
print("done", flush=True)
if len(sys.argv) > 1:
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(float(sys.argv[1]))
"""



def start(cli: CLI, repo: Repo, *args: str) -> tuple[str, subprocess.Popen[bytes]]:
    (repo.path / "train.py").write_text(FLOOD)
    (repo.path / "requirements.txt").write_text("")
    run_git(repo.path, "commit", "-qam", "flood")
    extra = ["--args", " ".join(args)] if args else []
    task = cli("task", "create", "--project", "p", "--name", "flood", "--repo",
               str(repo.path), "--script", "train.py", "--queue", "gpu", *extra).out.strip()
    run = cli("task", "run", task).out.strip()
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    return run, worker


def test_the_live_log_is_capped_in_bytes(
    cli: CLI, git_repo: Repo, machine_redis: str
) -> None:
    run, worker = start(cli, git_repo)
    assert worker.wait(timeout=110) == 0
    client = redis.Redis.from_url(machine_redis)
    entries = client.xrange(keys.logs_stream(run))
    stored = sum(len(e[b"line"]) for _id, e in entries)
    assert stored <= LOG_STREAM_MAX_BYTES + LOG_LINE_MAX_BYTES, stored
    assert all(len(e[b"line"]) <= LOG_LINE_MAX_BYTES + 200 for _id, e in entries)
    notes = [e[b"line"].decode() for _id, e in entries if e[b"stream"] == b"retrain"]
    assert any("output.log" in note for note in notes), notes
    assert client.ttl(keys.logs_stream(run)) > 0
    client.close()


def test_the_stream_expires_from_its_first_line(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "job.pid"
    run, worker = start(cli, git_repo, "600", str(pid_file))
    client = redis.Redis.from_url(machine_redis)
    try:
        deadline = time.monotonic() + 100
        while not client.exists(keys.logs_stream(run)):
            assert time.monotonic() < deadline, "the job never logged"
            time.sleep(0.1)
        # The worker dies with its job running: nothing will ever end the stream.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        assert client.ttl(keys.logs_stream(run)) > 0
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_file.exists():  # the job runs in a process group of its own: end it too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        client.close()
