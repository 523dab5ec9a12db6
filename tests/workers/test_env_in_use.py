"""A running job's environment survives other jobs' builds, through real `retrain worker`s.

Environments are real venvs built offline with uv from a wheel the test writes; the cache is
filled to its limit with stand-ins (a marker is all eviction reads), all used more recently
than the running job's environment, so the next build must evict something and the running
job's environment is the least recently used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.queue import keys
from tests.conftest import CLI
from tests.tasks.conftest import machine_redis_url, run_git
from tests.workers.test_envs import TINY, _write_wheel
from workers.envs import MARKER

HOLD = """\
import os, pathlib, time
go = pathlib.Path(os.environ["GO_FILE"])
print("waiting", flush=True)
while not go.exists():
    time.sleep(0.05)
import tinypkg  # from this job's environment, which must still be there
print("still here", tinypkg.VALUE)
"""
QUICK = "print('quick')\n"
WAIT_S = 120.0


@pytest.fixture
def project(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> Iterator[redis.Redis]:
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _write_wheel(wheels)
    for name, value in {"UV_FIND_LINKS": str(wheels), "UV_NO_INDEX": "1",
                        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
                        "UV_PYTHON_DOWNLOADS": "never"}.items():
        monkeypatch.setenv(name, value)
    repo = tmp_path / "project"
    repo.mkdir()
    run_git(repo, "init", "-q", "-b", "main")
    (repo / "hold.py").write_text(HOLD)
    (repo / "quick.py").write_text(QUICK)
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "scripts")
    pins = {"a": [TINY], "b": ["tinypkg==0.1.0 ; python_version > '3'"], "c": []}
    for name, lines in pins.items():
        (tmp_path / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
        cli("task", "create", "--project", "p", "--name", name, "--repo", str(repo),
            "--script", "hold.py" if name == "a" else "quick.py", "--queue", name,
            "--requirements", str(tmp_path / f"{name}.txt"),
            "--env", f"GO_FILE={tmp_path / 'go'}")
    yield client
    client.flushdb()
    client.close()


def worker_argv(queue: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
            "--queue", queue, "--gpus", "none", "--burst"]


def log_lines(client: redis.Redis, task_id: str) -> list[tuple[str, str]]:
    return [(e[1][b"stream"].decode(), e[1][b"line"].decode())
            for e in client.xrange(keys.logs_stream(task_id))]


def finished(client: redis.Redis, task_id: str) -> dict[str, Any]:
    """The run's `finished` report, as the worker sent it."""
    for _id, fields in client.xrange(keys.REPORTS_STREAM):
        for raw in fields.values():
            report = json.loads(raw)
            if report.get("task_id") == task_id and report.get("kind") == "finished":
                return dict(report)
    raise AssertionError(f"no finished report for {task_id}")


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def stand_ins(envs: Path, count: int) -> None:
    """Complete-looking environments, all used more recently than anything real here."""
    later = time.time() + 3600
    for i in range(count):
        path = envs / f"{i:024x}"
        path.mkdir(parents=True)
        (path / MARKER).write_text(json.dumps({"key": path.name, "bytes": 1}))
        os.utime(path / MARKER, (later, later))


@pytest.mark.timeout(600)
def test_a_running_jobs_environment_survives_another_jobs_build(
    cli: CLI, project: redis.Redis, tmp_path: Path, retrain_home: Path
) -> None:
    client = project
    envs = retrain_home / "cache" / "envs"
    a = cli("task", "run", "p/a").out.strip()
    b = cli("task", "run", "p/b").out.strip()

    first = subprocess.Popen(worker_argv("a"), env=os.environ.copy(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: ("output", "waiting") in log_lines(client, a), "job a to start")
        [env_a] = [p.name for p in envs.iterdir() if p.is_dir() and not p.name.startswith(".")]
        stand_ins(envs, 19)  # with env_a: the default limit of 20 is reached

        # Another job builds its environment: the cache is over its limit, and the least
        # recently used environment is the one job a is running in.
        done = subprocess.run(worker_argv("b"), env=os.environ.copy(), capture_output=True,
                              text=True, timeout=WAIT_S, check=False)
        assert done.returncode == 0, done.stderr
        assert finished(client, b)["status"] == "completed"
        assert (envs / env_a / MARKER).is_file()
        assert len([p for p in envs.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 20
    finally:
        (tmp_path / "go").touch()
        _out, err = first.communicate(timeout=WAIT_S)
    assert first.returncode == 0, err
    report = finished(client, a)
    assert report["status"] == "completed", report.get("error")
    assert ("output", "still here 42") in log_lines(client, a)
    assert report["environment"]["key"] == env_a and report["environment"]["waited_s"] == 0

    # Once job a has ended its environment may go, by last use, under the configured limit.
    c = cli("task", "run", "p/c").out.strip()
    done = subprocess.run(worker_argv("c"), env={**os.environ, "RETRAIN_ENV_CACHE_MAX_COUNT": "2"},
                          capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert done.returncode == 0, done.stderr
    env_c = finished(client, c)["environment"]["key"]
    left = {p.name for p in envs.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert len(left) == 2 and env_c in left and env_a not in left
