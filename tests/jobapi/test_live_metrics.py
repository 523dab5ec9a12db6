"""The job API end to end: a training script using `retrain_run` runs through a real worker
(a forking RQ worker in its own process) while `retrain metrics -f` follows it, and the
scheduler's ingest stores what it reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.runtime import Runtime
from orchestrator.scheduler.ingest import Ingest
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

CONFIG = """\
lr = 0.1
epochs = 3
layers = [64, 32]
"""

TRAIN = """\
import os, pathlib, time
import config
import retrain_run as run

run.connect(config)
print("config: lr", config.lr, "epochs", config.epochs, "layers", config.layers)
print("params", sorted(run.params().items()))
for i in range(100):
    run.log_metric("loss", 1.0 / (i + 1), step=i)
# Wait until the follower has seen points while the job is still running: liveness shown
# by what happened, not by timing.
go = pathlib.Path(os.environ["GO_FILE"])
deadline = time.monotonic() + 90
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
for i in range(100, 334):
    run.log_metric("loss", 1.0 / (i + 1), step=i)
for i in range(333):
    run.log_metric("accuracy", i / 332)
    run.log_metric("lr", config.lr * 0.99 ** i, step=i)
"""


def _follower(run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()",
         "metrics", run_id, "-f", "--json"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def _worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()",
         "worker", "--queue", "gpu", "--gpus", "none", "--burst"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class _Scheduler:
    """The scheduler's ingest, stepping in a thread: the follower ends when the store says
    the run ended (never on the stream's `end` entry alone), so reports must be applied."""

    def __init__(self, machine_redis: str) -> None:
        self.machine_redis = machine_redis
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        runtime = Runtime()
        client = redis.Redis.from_url(self.machine_redis)
        try:
            ingest = Ingest(client, runtime.tasks, runtime.models, "t")
            while not self.done.is_set():
                ingest.step()
                self.done.wait(0.2)
        finally:
            client.close()
            runtime.close()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_a_job_logs_1000_points_in_3_series_followed_live_and_connect_overrides_config(
    cli: CLI, git_repo: Repo, tmp_path: Path, machine_redis: str
) -> None:
    (git_repo.path / "config.py").write_text(CONFIG)
    (git_repo.path / "train.py").write_text(TRAIN)
    (git_repo.path / "requirements.txt").write_text("six==1.16.0\n")
    run_git(git_repo.path, "add", "-A")
    run_git(git_repo.path, "commit", "-qm", "train with the job API")
    go = tmp_path / "go"
    cli("task", "create", "--project", "jobapi", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gpu",
        "--param", "General/lr=0.5", "--param", "General/epochs=7", "--env", f"GO_FILE={go}")
    run_id = cli("task", "run", "jobapi/train").out.strip()

    follower = _follower(run_id)
    worker = _worker()
    scheduler = _Scheduler(machine_redis)
    updates: list[dict[str, object]] = []
    try:
        assert follower.stdout is not None
        for line in follower.stdout:
            update = json.loads(line)
            updates.append(update)
            if update["series"] and not go.exists():
                # Seen while the job waits on us: these points came live, mid-run.
                assert update["status"] == "running"
                assert update["series"]["loss"]["count"] == 100
                # `retrain status` shows the running task's latest point too.
                status = cli.json("status")
                assert isinstance(status, dict)
                [busy] = [w for w in status["workers"] if w["task"] == run_id]
                assert busy["metric"] == {"name": "loss", "step": 99, "value": 0.01}, busy
                go.touch()
        assert follower.wait(60) == 0
        assert worker.wait(90) == 0
    finally:
        scheduler.stop()
        _stop(follower)
        _stop(worker)
    assert go.exists(), updates
    final = updates[-1]
    assert final["status"] == "completed"
    series = final["series"]
    assert isinstance(series, dict)
    assert {n: s["count"] for n, s in series.items()} == {"loss": 334, "accuracy": 333, "lr": 333}
    assert sum(s["count"] for s in series.values()) == 1000
    assert series["loss"]["min"] == pytest.approx(1 / 334)
    assert series["loss"]["max"] == 1.0
    assert series["accuracy"]["last"] == 1.0 and series["accuracy"]["step"] == 332
    assert series["lr"]["points"][0] == [0, 0.5]  # the override, as the code used it

    # The scheduler ingested the report: series stored, last values as the run's metrics.
    runtime = Runtime()
    try:
        Ingest(redis.Redis.from_url(machine_redis), runtime.tasks, runtime.models, "t").step()
    finally:
        runtime.close()
    shown = cli.json("task", "show", run_id)
    assert isinstance(shown, dict)
    assert shown["status"] == "completed", shown["error"]
    assert shown["metrics"] == {"loss": pytest.approx(1 / 334), "accuracy": 1.0,
                                "lr": pytest.approx(0.5 * 0.99 ** 332)}
    assert shown["series"]["loss"] == {"count": 334, "last": pytest.approx(1 / 334),
                                       "step": 333, "min": pytest.approx(1 / 334), "max": 1.0}
    # connect recorded the code's defaults; the run's output shows the overrides it applied.
    assert shown["logged_params"] == {"General/lr": 0.1, "General/epochs": 3,
                                     "General/layers": [64, 32]}
    log = cli("logs", run_id).out
    assert "config: lr 0.5 epochs 7 layers [64, 32]" in log, log
    text = cli("task", "show", run_id).out
    assert "loss: last 0.00299401 at step 333, min 0.00299401, max 1, 334 points" in text

    # From the store once reported: the table, the complete JSON, CSV.
    table = cli("metrics", run_id).out
    assert table.splitlines()[0].split() == ["series", "last", "min", "max", "step", "points"]
    assert any(line.split()[:2] == ["accuracy", "1"] for line in table.splitlines())
    stored = cli.json("metrics", run_id)
    assert isinstance(stored, dict) and len(stored["series"]["loss"]["points"]) == 334
    rows = cli("metrics", run_id, "--csv").out.splitlines()
    assert rows[0] == "series,step,value" and len(rows) == 1001
    assert "accuracy,332,1.0" in rows
