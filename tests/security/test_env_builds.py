"""Building a job's environment never runs a package's code as the worker.

A task's pinned requirements may name a package that has to be built from source (a local
folder, an sdist, a git URL): installing it runs the package's own build backend. A real
worker (started with a cloud key and the worker secret in its environment, as an operator
would) takes a task whose requirements name such a package, whose backend tries to write a
marker file, read the worker's secret file and its cloud key. By default the worker builds
nothing: the run fails in its environment step with a message naming the package and the
option, and the backend never runs. With `--allow-builds` it runs, without the worker's
environment, and (with Landlock) without its secret file or a place to write outside the
new environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from orchestrator.queue import keys
from orchestrator.runtime import Runtime
from orchestrator.scheduler.ingest import Ingest
from orchestrator.settings import ensure_worker_secret
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git
from tests.workers import buildcode
from workers import sandbox

git_repo = task_fixtures.git_repo

TRAIN = "import evilpkg\nprint('SEEN ' + evilpkg.SEEN)\n"


def run_with_evil_requirement(
    cli: CLI, repo: Repo, url: str, home: Path, tmp_path: Path, *worker_args: str
) -> tuple[dict[str, object], list[str], str]:
    """Create and run a task needing `evilpkg` (an in-tree build backend) through a real
    worker; the task as `task show` has it, its live log and the worker's stderr."""
    secret = ensure_worker_secret(home)
    source = buildcode.evil_package(
        tmp_path / "evilpkg", tmp_path / "built-marker", home / "worker.secret"
    )
    (repo.path / "train.py").write_text(TRAIN)
    run_git(repo.path, "commit", "-qam", "a training script that needs evilpkg")
    reqs = tmp_path / "reqs.txt"
    reqs.write_text(f"evilpkg @ {source.as_uri()}\n")
    task = cli(
        "task",
        "create",
        "--project",
        "p",
        "--name",
        "evil",
        "--repo",
        str(repo.path),
        "--script",
        "train.py",
        "--queue",
        "gpu",
        "--requirements",
        str(reqs),
    ).out.strip()
    run = cli("task", "run", task).out.strip()
    env = {
        **os.environ,
        "AWS_SECRET_ACCESS_KEY": "hunter2",
        "RETRAIN_WORKER_SECRET": secret,
        "UV_NO_INDEX": "1",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            "from orchestrator.cli import main; main()",
            "worker",
            "--queue",
            "gpu",
            "--gpus",
            "none",
            "--burst",
            *worker_args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    runtime = Runtime()
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test", secret=secret).step()
    shown = cli.json("task", "show", run)
    runtime.close()
    client = redis.Redis.from_url(url)
    lines = [e[1][b"line"].decode() for e in client.xrange(keys.logs_stream(run))]
    client.close()
    return shown, lines, worker.stderr


def test_a_package_that_needs_building_fails_the_run_and_never_runs(
    cli: CLI, git_repo: Repo, machine_redis: str, retrain_home: Path, tmp_path: Path
) -> None:
    shown, _lines, started = run_with_evil_requirement(
        cli, git_repo, machine_redis, retrain_home, tmp_path
    )
    assert "builds allowed" not in started, started
    assert shown["status"] == "failed", shown
    error = str(shown["error"])
    assert error.startswith("environment failed:"), error
    assert "evilpkg" in error and "--allow-builds" in error, error
    assert "Traceback" not in error, error
    assert not (tmp_path / "built-marker").exists(), "the package's build code ran"


def test_an_allowed_build_gets_none_of_the_workers_credentials(
    cli: CLI, git_repo: Repo, machine_redis: str, retrain_home: Path, tmp_path: Path
) -> None:
    shown, lines, started = run_with_evil_requirement(
        cli, git_repo, machine_redis, retrain_home, tmp_path, "--allow-builds"
    )
    assert shown["status"] == "completed", shown["error"]
    assert "builds allowed" in started, started  # said in the worker's start line
    found = [line for line in lines if line.startswith("SEEN ")]
    assert found, lines
    seen = json.loads(found[-1][len("SEEN ") :])
    # The build ran (it is in the package), without the worker's cloud key or settings.
    assert seen["aws"] is None and seen["retrain"] == [], seen
    if sandbox.landlock_abi() > 0:
        # Confined: the worker's secret is hidden, and it wrote nothing outside its build.
        assert seen["secret"] == "PermissionError", seen
        assert seen["marker"] == "PermissionError", seen
        assert not (tmp_path / "built-marker").exists()
