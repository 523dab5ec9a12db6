"""Real git repositories and real Redis (the machine's and the embedded server) for tasks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REDIS_ENV = "RETRAIN_TEST_REDIS_URL"


def run_git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=dev@example.com", "-c", "user.name=dev", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()


@dataclass
class Repo:
    path: Path
    first: str
    head: str
    feature: str


@pytest.fixture
def git_repo(tmp_path: Path) -> Repo:
    """A training project with two commits on main and a `feature` branch."""
    repo = tmp_path / "project"
    (repo / "pkg").mkdir(parents=True)
    run_git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('training')\n")
    (repo / "requirements.txt").write_text("# pinned\nnumpy==1.26.4\nsix==1.16.0  # tiny\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "first")
    first = run_git(repo, "rev-parse", "HEAD")
    (repo / "pkg/__init__.py").write_text("")
    (repo / "pkg/evaluate.py").write_text("print('evaluating')\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "add evaluation")
    head = run_git(repo, "rev-parse", "HEAD")
    run_git(repo, "checkout", "-qb", "feature")
    (repo / "feature.py").write_text("print('feature')\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "feature")
    feature = run_git(repo, "rev-parse", "HEAD")
    run_git(repo, "checkout", "-q", "main")
    return Repo(repo, first, head, feature)


def machine_redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{REDIS_ENV} is not set; CI must run the Redis tests")
        pytest.skip(f"set {REDIS_ENV} (a Redis database the tests may flush) to run this")
    return url


@pytest.fixture(params=["machine", "embedded"])
def redis_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
              retrain_home: Path) -> Iterator[str]:
    """Queues on the machine's Redis (a flushed database) and on the embedded server."""
    if request.param == "machine":
        yield request.getfixturevalue("machine_redis")
        return
    from orchestrator.queue.connection import embedded_url, stop_embedded
    from orchestrator.settings import Settings

    settings = Settings.load()
    url = embedded_url(settings, start=True)
    assert url is not None and url.startswith("unix://")
    try:
        yield url
    finally:
        stop_embedded(settings)


def raw_jobs(url: str) -> dict[str, dict[bytes, bytes]]:
    """Every RQ job hash in Redis, by job id, as stored."""
    client = redis.Redis.from_url(url)
    try:
        return {key.decode().removeprefix("rq:job:"): client.hgetall(key)
                for key in client.scan_iter("rq:job:*")}
    finally:
        client.close()


def queue_list(url: str, name: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [v.decode() for v in client.lrange(f"rq:queue:{name}", 0, -1)]
    finally:
        client.close()
