"""`retrain up` as a user runs it: a real process with its scheduler, worker and (on the
embedded path) its own Redis; a tagged version runs to completion; Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from orchestrator.processes import alive
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, machine_redis_url, run_git
from tests.triggers.conftest import wait_for

git_repo = task_fixtures.git_repo

TRIGGERS = """\
version: 1
triggers:
  - name: retrain
    on: {dataset: {project: dataset_blogpost, tags: [Production], event: tagged}}
    run:
      template: dataset_blogpost/training
      overrides: {General/dataset_id: "${dataset.id}"}
"""

TRAIN = """\
import json, os, pathlib
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
print("trained on", os.environ["RETRAIN_PARAM_GENERAL_DATASET_ID"])
"""


@pytest.mark.parametrize("services", ["embedded", "machine"])
def test_up_runs_the_loop_and_ctrl_c_leaves_nothing_behind(
    cli: CLI, git_repo: Repo, tmp_path: Path, retrain_home: Path,
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, services: str,
) -> None:
    from orchestrator import health

    if services == "machine":  # the machine's Redis and PostgreSQL
        url = machine_redis_url()
        redis.Redis.from_url(url).flushdb()
        monkeypatch.setenv("RETRAIN_REDIS_URL", url)
        monkeypatch.setenv("RETRAIN_DATABASE_URL", request.getfixturevalue("postgres_url"))
    (git_repo.path / "train.py").write_text(TRAIN)
    run_git(git_repo.path, "commit", "-qam", "train")
    cli("task", "create", "--project", "dataset_blogpost", "--name", "training", "--repo",
        str(git_repo.path), "--script", "train.py", "--param", "General/dataset_id=")
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)

    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "up", "--gpus",
         "none"], env=os.environ.copy(), stdout=log, stderr=log, cwd=tmp_path)
    try:
        wait_for(lambda: health.check(retrain_home, "worker", 60)[0]
                 and health.check(retrain_home, "scheduler", 60)[0], "retrain up to start")
        state = json.loads((retrain_home / "up.json").read_text())
        pids = [c["pid"] for c in state["children"]]
        if services == "embedded":
            pids.append(json.loads((retrain_home / "redis.json").read_text())["pid"])
        assert [c["role"] for c in state["children"]] == ["scheduler", "worker"]
        assert state["embedded_redis"] is (services == "embedded")

        # A second `up` on the same home refuses, naming the first.
        second = subprocess.run(
            [sys.executable, "-c", "from orchestrator.cli import main; main()", "up"],
            env=os.environ.copy(), capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert second.returncode == 1
        assert f"already running for RETRAIN_HOME={retrain_home} (pid {proc.pid})" in \
            second.stderr

        # Another terminal: plain commands find the (embedded) Redis by themselves.
        version = cli("dataset", "create", "--project", "dataset_blogpost", "--name",
                      "occupancy").out.strip()
        cli("dataset", "close", "--id", version)
        cli("dataset", "tag", version, "Production")

        def completed() -> list[dict[str, object]]:
            rows = cli.json("task", "list", "--status", "completed")
            assert isinstance(rows, list)
            return rows

        [run] = wait_for(completed, "the triggered run to complete", timeout=90)  # type: ignore[misc]
        assert cli("logs", str(run["id"])).out == f"trained on {version}\n"
        status = cli.json("status")
        assert isinstance(status, dict)
        assert [(w["state"], w["task"]) for w in status["workers"]] == [("idle", None)]
        assert status["scheduler"]["alive"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert "retrain up: stopped" in output and "Traceback" not in output
    assert not [pid for pid in pids if alive(pid)], output  # scheduler, worker, Redis
    assert not (retrain_home / "redis.json").exists()
    assert not (retrain_home / "up.json").exists()
    assert "no running worker" in cli("health", "worker", expect=1).err

