"""A retraining loop to test the scheduler on: a template, a triggers file, dataset versions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from orchestrator.runtime import Runtime
from tests.conftest import CLI
from tests.tasks.conftest import Repo, git_repo, machine_redis_url  # noqa: F401

TRIGGERS = """\
version: 1
defaults: {queue: gpu}
triggers:
  - name: retrain-on-production-data
    on:
      dataset:
        project: dataset_blogpost
        name: "*"
        tags: [Production]
        event: [finalized, tagged]
    run:
      template: dataset_blogpost/training
      overrides:
        General/dataset_id: "${dataset.id}"
        General/note: "retrain on ${dataset.name} v${dataset.version}"
      tags: [auto]
    policy: {on_busy: POLICY, max_concurrent: LIMIT}
"""


@dataclass
class Loop:
    cli: CLI
    triggers: Path
    template: str
    redis_url: str

    def version(self, runtime: Runtime, name: str = "occupancy", tags: tuple[str, ...] = ()
                ) -> str:
        """A final dataset version (no files: matching needs none)."""
        info = runtime.datasets.create("dataset_blogpost", name, tags=tags)
        return runtime.datasets.finalize(info.id).version.id

    def jobs(self) -> list[str]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            return sorted(k.decode().removeprefix("rq:job:") for k in client.scan_iter("rq:job:*"))
        finally:
            client.close()


@pytest.fixture
def loop(cli: CLI, git_repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
         request: pytest.FixtureRequest) -> Iterator[Loop]:
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    for name in ("database_url", "postgres_url"):
        if name in request.fixturenames:
            monkeypatch.setenv("RETRAIN_DATABASE_URL", request.getfixturevalue(name))
    policy = getattr(request, "param", ("queue", 100))
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(TRIGGERS.replace("POLICY", policy[0]).replace("LIMIT", str(policy[1])))
    monkeypatch.setenv("RETRAIN_TRIGGERS_FILE", str(triggers))
    template = cli("task", "create", "--project", "dataset_blogpost", "--name", "training",
                   "--repo", str(git_repo.path), "--script", "train.py", "--queue", "gpu",
                   "--param", "General/dataset_id=", "General/note=").out.strip()
    yield Loop(cli, triggers, template, url)
    client.flushdb()
    client.close()


def retrain(*args: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", *args]


@contextmanager
def daemon(*extra: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`retrain scheduler` as a real process; stopped with SIGTERM (or already killed). Its
    log goes to a file (a pipe nobody reads would fill up and block it)."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(retrain("scheduler", "--poll-interval", "0.2", *extra),
                                env=env or os.environ.copy(), stdout=log, stderr=log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for(
    predicate: Callable[[], object],
    what: str,
    timeout: float = 60,
    describe: Callable[[], object] | None = None,
) -> object:
    """Poll `predicate` until it is truthy; fail naming `what` (and what `describe` returns
    then) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.05)
