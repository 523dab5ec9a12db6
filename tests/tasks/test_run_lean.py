"""`retrain task run` without SQLAlchemy, pydantic, redis-py or RQ (tasks/runs.py,
queue/plainjob.py): the job it queues is one a real worker runs to completion, signed with the
worker secret, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from orchestrator.runtime import Runtime
from orchestrator.scheduler.ingest import Ingest
from tests.conftest import CLI
from tests.tasks.conftest import Repo, git_repo, machine_redis_url, run_git  # noqa: F401

HARNESS = """
import json, os, sys
from orchestrator.cli import main
try:
    main()
finally:
    with open(os.environ["RETRAIN_TEST_MODULES"], "w") as f:
        json.dump(sorted(sys.modules), f)
"""


def test_a_run_queued_on_the_lean_path_is_run_by_a_worker(
    cli: CLI,
    git_repo: Repo,  # noqa: F811
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    monkeypatch.setenv("RETRAIN_WORKER_SECRET", "a-worker-secret-of-32-characters")
    (git_repo.path / "train.py").write_text(
        "import json, os, sys\n"
        "params = json.loads(os.environ.get('RETRAIN_PARAMS_JSON', '{}') or '{}')\n"
        "print('epochs', sys.argv[1:])\n"
    )
    (git_repo.path / "requirements.txt").write_text("# nothing to install\n")
    run_git(git_repo.path, "commit", "-qam", "a run that succeeds")
    # A branch, not a commit: `task run` asks the repository, then freezes the commit.
    cli("task", "create", "--project", "lean", "--name", "train", "--repo", str(git_repo.path),
        "--script", "train.py", "--queue", "lean", "--param", "Args/epochs=1",
        "--args", "${params.Args/epochs}")
    report = tmp_path / "modules.json"
    try:
        done = subprocess.run(
            [sys.executable, "-c", HARNESS, "task", "run", "lean/train", "--param",
             "Args/epochs=3", "--tags", "nightly", "--json"],
            env={**os.environ, "RETRAIN_TEST_MODULES": str(report)},
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        modules = json.loads(report.read_text())
        loaded = [m for m in ("sqlalchemy", "pydantic", "redis", "rq") if m in modules]
        assert not loaded, f"task run took the full path: it loaded {loaded}"
        queued = json.loads(done.stdout)
        assert queued["in_redis"] is True and queued["status"] == "queued"
        assert queued["spec"]["commit"] == run_git(git_repo.path, "rev-parse", "HEAD")
        assert queued["tags"] == ["nightly"] and queued["parameters"] == {"Args/epochs": 3}
        # What it printed is what the store holds (`task show` reads it back).
        shown = cli.json("task", "show", queued["id"])
        assert isinstance(shown, dict)
        assert {k: shown[k] for k in queued if k != "in_redis"} == {
            k: v for k, v in queued.items() if k != "in_redis"
        }

        worker = subprocess.run(
            [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
             "--queue", "lean", "--gpus", "none", "--burst"],
            env=os.environ.copy(), capture_output=True, text=True, timeout=300, check=False,
        )
        assert worker.returncode == 0, worker.stderr
        runtime = Runtime()
        try:
            secret = runtime.settings.worker_secret  # the reports are signed too
            Ingest(client, runtime.tasks, runtime.models, "test", secret=secret).step()
        finally:
            runtime.close()
        ran = cli.json("task", "show", queued["id"])
        assert isinstance(ran, dict)
        assert (ran["status"], ran["exit_code"], ran["error"]) == ("completed", 0, None), ran
        assert "epochs ['3']" in cli("logs", queued["id"]).out
    finally:
        client.flushdb()
        client.close()


def test_the_lean_insert_writes_every_column_as_the_orm_would() -> None:
    """tasks/runs.py names the `tasks` columns, their kinds and the ORM's defaults for what a
    clone leaves out: a column added to `Task` (or a changed default) must be added there."""
    from orchestrator.store.models import JSONType, Task, UTCDateTime
    from orchestrator.tasks import runs

    columns = Task.__table__.columns
    assert list(runs.TASK_COLUMNS) == [c.name for c in columns]
    assert {c.name for c in columns if c.type is JSONType} == runs.JSON_COLUMNS
    assert {c.name for c in columns if isinstance(c.type, UTCDateTime)} == runs.TIME_COLUMNS
    for name, value in runs.DEFAULTS.items():
        default = columns[name].default
        if default is None:
            assert value is None and columns[name].nullable, name
        else:
            expected = default.arg(None) if callable(default.arg) else default.arg
            assert value == expected, name


@pytest.mark.parametrize("lean", [True, False])
def test_a_run_queued_before_up_made_the_secret_still_runs(
    cli: CLI,
    git_repo: Repo,  # noqa: F811
    retrain_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    lean: bool,
) -> None:
    """New-user pass on issue 15: on a fresh home with the embedded Redis, `task run` queued
    unsigned payloads (no worker secret yet); `retrain up` then made one, and its worker
    refused every such job, so the runs stayed queued for good. Whatever uses a home's
    embedded Redis makes the home's secret first, as `up` would."""
    from orchestrator.queue.connection import embedded_url
    from orchestrator.settings import Settings

    (git_repo.path / "train.py").write_text("print('trained')\n")
    (git_repo.path / "requirements.txt").write_text("# nothing to install\n")
    run_git(git_repo.path, "commit", "-qam", "a run that succeeds")
    cli("task", "create", "--project", "p", "--name", "train", "--repo", str(git_repo.path),
        "--script", "train.py", "--queue", "q")
    assert not (retrain_home / "worker.secret").exists()
    if lean:
        run = cli("task", "run", "p/train").out.strip()
    else:  # the full path: clone, then enqueue
        cloned = cli.json("task", "clone", "p/train")
        assert isinstance(cloned, dict)
        run = str(cloned["id"])
        cli("task", "enqueue", run)
    assert (retrain_home / "worker.secret").exists()
    worker = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "q", "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert worker.returncode == 0 and "not signed" not in worker.stderr, worker.stderr
    settings = Settings.load()
    client = redis.Redis.from_url(str(embedded_url(settings, start=False)))
    runtime = Runtime()
    try:
        Ingest(client, runtime.tasks, runtime.models, "test",
               secret=runtime.settings.worker_secret).step()
    finally:
        runtime.close()
        client.close()
    shown = cli.json("task", "show", run)
    assert isinstance(shown, dict) and shown["status"] == "completed", shown
