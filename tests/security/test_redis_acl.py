"""The Redis ACLs in deploy/redis/users.acl.example, tested for real: a worker holding only the
`worker` user's credentials runs a job end to end, and cannot do what the file forbids (take
the scheduler's lease, read reports, flush the database)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.queue import keys
from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo
EXAMPLE = Path(__file__).parents[2] / "deploy" / "redis" / "users.acl.example"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def acl_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A private redis-server on loopback loading the example ACL file (passwords filled in);
    yields (scheduler URL, worker URL)."""
    binary = shutil.which("redis-server")  # Redis 7 (key read/write selectors); the embedded
    assert binary, "redis-server (7 or newer) must be on PATH for the ACL test"  # one is 6.2
    acl = tmp_path / "users.acl"
    acl.write_text(EXAMPLE.read_text().replace("CHANGE-ME-scheduler", "s3cret-sched")
                   .replace("CHANGE-ME-worker", "s3cret-work"))
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--aclfile", str(acl), "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler_url = f"redis://scheduler:s3cret-sched@127.0.0.1:{port}/0"
    worker_url = f"redis://worker:s3cret-work@127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(scheduler_url).ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, "redis-server refused the ACL file"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        monkeypatch.setenv("RETRAIN_REDIS_URL", scheduler_url)
        yield scheduler_url, worker_url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_worker_with_the_worker_user_runs_a_job_and_nothing_more(
    cli: CLI, git_repo: Repo, acl_redis: tuple[str, str], tmp_path: Path
) -> None:
    _scheduler_url, worker_url = acl_redis
    (git_repo.path / "requirements.txt").write_text("")
    # The job API's points go live through the worker: the metrics stream's selector.
    (git_repo.path / "train.py").write_text(
        "import retrain_run as run\nfor i in range(3):\n    run.log_metric('loss', 1 / (i + 1))\n"
    )
    run_git(git_repo.path, "commit", "-qam", "no requirements; log a metric")
    task = cli("task", "create", "--project", "p", "--name", "t", "--repo", str(git_repo.path),
               "--script", "train.py", "--queue", "gpu").out.strip()
    run = cli("task", "run", task).out.strip()
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env={**os.environ, "RETRAIN_REDIS_URL": worker_url}, capture_output=True, text=True,
        timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NOPERM" not in done.stderr and "no permissions" not in done.stderr, done.stderr
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    Scheduler(Runtime(), triggers, wakeup=False).ingest.step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed", (shown["error"], done.stderr[-3000:])
    assert shown["series"]["loss"]["count"] == 3
    live = redis.Redis.from_url(_scheduler_url).xrange(keys.metrics_stream(run))
    points = [v for _id, e in live if b"p" in e for v in json.loads(e[b"p"])["loss"][1]]
    assert points == [1.0, 0.5, 1 / 3] and live[-1][1] == {b"end": b"completed"}

    worker = redis.Redis.from_url(worker_url)
    forbidden = [
        lambda: worker.set(keys.SCHEDULER_LEASE, "attacker"),
        lambda: worker.xrange(keys.REPORTS_STREAM),
        lambda: worker.xrange(keys.logs_stream(run)),
        lambda: worker.xrange(keys.metrics_stream(run)),
        lambda: worker.delete(keys.metrics_stream(run)),
        lambda: worker.flushall(),
        lambda: worker.config_set("dir", "/tmp"),
        lambda: worker.keys("*"),
        lambda: worker.get("retrain:anything-else"),
        # The report stream and logs take appends only: no trimming, deleting or regrouping.
        lambda: worker.xtrim(keys.REPORTS_STREAM, maxlen=0),
        lambda: worker.delete(keys.REPORTS_STREAM),
        lambda: worker.xgroup_setid(keys.REPORTS_STREAM, keys.REPORTS_GROUP, "$"),
        lambda: worker.delete(keys.logs_stream(run)),
        lambda: worker.delete(keys.heartbeat_key(run)),
        # Its database only: no other database of the server, not even through MOVE or COPY.
        lambda: worker.execute_command("SELECT", 1),
        lambda: worker.execute_command("SELECT", "00"),
        lambda: worker.move(f"rq:job:{run}", 1),
        lambda: worker.copy(f"rq:job:{run}", f"rq:job:{run}", destination_db=1),
    ]
    for attempt in forbidden:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert worker.execute_command("SELECT", 0)  # what RETRAIN_REDIS_URL names still works
    worker.close()
