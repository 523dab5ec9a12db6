"""MLflow captured with no code change: a script using real MLflow (pinned mlflow-skinny in
the job's requirements, installed by the worker's environment cache) runs through a real
worker; its params, per-step metrics, artifacts and sklearn model become the run's record and
a registered model, and a model trigger fires on it."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import redis

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.scheduler.ingest import Ingest
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

TRAIN = """\
import os
import tempfile

import mlflow
import mlflow.sklearn
import numpy as np
from sklearn.linear_model import LogisticRegression

X = np.array([[0.0], [1.0], [2.0], [3.0]])
y = np.array([0, 0, 1, 1])
with mlflow.start_run():
    mlflow.log_param("C", 0.5)
    mlflow.set_tag("team", "vision")
    for i in range(5):
        mlflow.log_metric("val/loss", 1 / (i + 1), step=i)
    mlflow.log_metric("accuracy", 0.75)
    model = LogisticRegression(C=0.5).fit(X, y)
    mlflow.sklearn.log_model(model, "classifier")
    notes = os.path.join(tempfile.gettempdir(), "notes.txt")  # the checkout is read-only
    with open(notes, "w") as out:
        out.write("trained")
    mlflow.log_artifact(notes)
"""

REQUIREMENTS = """\
mlflow-skinny==2.22.0
scikit-learn==1.5.2
pandas==2.2.3
numpy==1.26.4
"""

TRIGGERS = """\
version: 1
triggers:
  - name: evaluate-new-models
    on: {model: {project: mlf, event: registered}}
    allow_cycles: true
    run:
      template: mlf/evaluate
      overrides: {General/model_uri: "${model.uri}"}
"""


def _worker(queue: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", queue, "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=800, check=False)


@pytest.mark.timeout(900)
def test_an_mlflow_script_is_captured_and_its_model_fires_a_trigger(
    cli: CLI, git_repo: Repo, tmp_path: Path, machine_redis: str
) -> None:
    (git_repo.path / "train.py").write_text(TRAIN)
    (git_repo.path / "requirements.txt").write_text(REQUIREMENTS)
    run_git(git_repo.path, "add", "-A")
    run_git(git_repo.path, "commit", "-qm", "train with mlflow")
    cli("task", "create", "--project", "mlf", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gpu",
        "--requirements", str(git_repo.path / "requirements.txt"))
    cli("task", "create", "--project", "mlf", "--name", "evaluate", "--repo",
        str(git_repo.path), "--module", "pkg.evaluate", "--queue", "cpu",
        "--param", "General/model_uri=")
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(TRIGGERS)
    runtime = Runtime()
    try:
        scheduler = Scheduler(runtime, triggers, reconcile_every=600, wakeup=False)
        assert scheduler.reload(force=True)
        scheduler.tick()
        run = cli("task", "run", "mlf/train").out.strip()
        done = _worker("gpu")
        assert done.returncode == 0, done.stderr[-3000:]
        Ingest(redis.Redis.from_url(machine_redis), runtime.tasks, runtime.models, "t").step()

        shown = cli.json("task", "show", run)
        assert isinstance(shown, dict)
        assert shown["status"] == "completed", (shown["error"], done.stderr[-4000:])
        assert shown["metrics"] == {"val/loss": 0.2, "accuracy": 0.75}
        assert shown["series"]["val/loss"] == {"count": 5, "last": 0.2, "step": 4,
                                               "min": 0.2, "max": 1.0}
        assert shown["logged_params"] == {"C": "0.5"}
        [mlflow_run] = shown["environment"]["mlflow"]["runs"]
        assert mlflow_run["tags"] == {"team": "vision"} and len(mlflow_run["run_id"]) == 32
        paths = {a["path"] for a in shown["artifacts"]}
        assert "mlflow/notes.txt" in paths
        assert not any(p.startswith("mlruns/") or "classifier" in p for p in paths), paths
        text = cli("task", "show", run).out
        assert "val/loss: last 0.2 at step 4, min 0.2, max 1, 5 points" in text

        [model] = cli.json("model", "list", "--project", "mlf")
        assert model["name"] == "classifier" and model["task_id"] == run
        metadata = model["metadata"]
        assert metadata["framework"] == "sklearn" and metadata["format"] == "tar"
        assert metadata["mlflow_run_id"] == mlflow_run["run_id"]
        sha = model["uri"].rsplit("/", 1)[-1]
        local = tmp_path / "model.tar"
        runtime.blobs.get_file(sha, local)
        with tarfile.open(local) as tar:
            assert {"MLmodel", "model.pkl"} <= set(tar.getnames())

        # A model registered from MLflow is a model like any: the trigger fires on it.
        assert scheduler.tick().fired == 1
        [evaluation] = cli.json("task", "list", "--project", "mlf", "--status", "queued")
        assert evaluation["trigger"] == "evaluate-new-models"
    finally:
        runtime.close()


EXTERNAL = """\
import os
print("tracking at", os.environ["MLFLOW_TRACKING_URI"])
print("🏃 View run bold-cat-7 at: http://mlflow.example:5000/#/experiments/3/runs/"
      + "ab" * 16)
"""


def test_a_task_with_its_own_tracking_uri_is_left_alone_and_its_run_recorded(
    cli: CLI, git_repo: Repo, machine_redis: str
) -> None:
    (git_repo.path / "train.py").write_text(EXTERNAL)
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "add", "-A")
    run_git(git_repo.path, "commit", "-qm", "a team's own mlflow")
    cli("task", "create", "--project", "mlf", "--name", "own", "--repo", str(git_repo.path),
        "--script", "train.py", "--queue", "gpu",
        "--env", "MLFLOW_TRACKING_URI=http://mlflow.example:5000")
    run = cli("task", "run", "mlf/own").out.strip()
    done = _worker("gpu")
    assert done.returncode == 0, done.stderr[-3000:]
    runtime = Runtime()
    try:
        Ingest(redis.Redis.from_url(machine_redis), runtime.tasks, runtime.models, "t").step()
    finally:
        runtime.close()
    shown = cli.json("task", "show", run)
    assert isinstance(shown, dict) and shown["status"] == "completed", shown
    assert "tracking at http://mlflow.example:5000" in cli("logs", run).out
    assert shown["environment"]["mlflow"] == {
        "tracking_uri": "http://mlflow.example:5000",
        "runs": [{"experiment_id": "3", "run_id": "ab" * 16}],
    }
