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
    marks = repo.path.parent / "marks"
    marks.mkdir(exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst", "--sandbox-write", str(marks)],
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
    pid_file = tmp_path / "marks" / "job.pid"  # the job may write there: --sandbox-write
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


def test_logs_tail_of_a_huge_stored_log_reads_in_bounded_memory(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path
) -> None:
    """`retrain logs --tail 2` of a 200 MB stored log took about five times the log in RSS:
    the whole blob, its text and its lines at once. It reads the end of the file now."""
    import hashlib

    from orchestrator.runtime import Runtime
    from orchestrator.storage.base import blob_key

    run = start_run_without_worker(cli, git_repo)
    log = tmp_path / "output.log"
    line = b"x" * 99 + b"\n"
    digest = hashlib.sha256()
    with log.open("wb") as out:
        for _ in range(20):
            chunk = line * 100_000  # 10 MB
            out.write(chunk)
            digest.update(chunk)
        out.write(b"second to last\nthe end\n")
        digest.update(b"second to last\nthe end\n")
    sha = digest.hexdigest()
    runtime = Runtime()
    runtime.blobs.put_file(sha, log)
    uri = f"{runtime.settings.storage_url.rstrip('/')}/{blob_key(sha)}"
    runtime.tasks.start(run, "w1")
    runtime.tasks.finish(run, "completed", exit_code=0,
                         artifacts=[{"path": "output.log", "uri": uri}])
    runtime.close()
    # The peak of this program alone: VmHWM belongs to the address space exec made, where
    # ru_maxrss would also count the (large) test process the child was forked from.
    probe = ("import re, sys\nfrom orchestrator.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "status = open('/proc/self/status').read()\n"
             "print(re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe, "logs", run, "--tail", "2"],
                          env=os.environ.copy(), capture_output=True, text=True, timeout=110,
                          check=False)
    assert done.stdout.splitlines() == ["second to last", "the end"], done.stderr[-2000:]
    peak_mb = int(done.stderr.strip().splitlines()[-1]) / 1024
    assert peak_mb < 180, f"{peak_mb:.0f} MB resident for the last two lines of a 200 MB log"


def start_run_without_worker(cli: CLI, repo: Repo) -> str:
    (repo.path / "requirements.txt").write_text("")
    run_git(repo.path, "commit", "-qam", "no requirements")
    task = cli("task", "create", "--project", "p", "--name", "big-log", "--repo",
               str(repo.path), "--script", "train.py").out.strip()
    return cli("task", "run", task).out.strip()
