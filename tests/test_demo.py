"""`python -m orchestrator.demo` (`make demo`), the newcomer's first command, end to end for
real: a git repository, `retrain up` with the embedded Redis, two dataset versions, two
trainings in one cached environment, chained evaluations, then nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import CLI


def test_the_demo_runs_the_whole_loop(retrain_home: Path, cli: CLI) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.demo"],
        env=dict(os.environ),  # RETRAIN_HOME is this test's home, so the demo keeps it
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output

    # What the demo printed is what the store holds.
    runs = cli.json("task", "list", "--project", "dataset_blogpost", "--tag", "auto")
    assert isinstance(runs, list)
    assert sorted((r["name"], r["status"]) for r in runs) == [
        ("evaluation", "completed"), ("evaluation", "completed"),
        ("training", "completed"), ("training", "completed")]
    shown = {r["id"]: cli.json("task", "show", r["id"]) for r in runs}
    trainings = sorted((s for s in shown.values() if s["name"] == "training"),
                       key=lambda s: s["created_at"])
    versions = [s["parameters"]["General/dataset_id"] for s in trainings]
    labels = [cli.json("dataset", "show", v)["version"]["version"] for v in versions]
    assert labels == ["1.0.0", "1.0.1"]
    second = cli.json("dataset", "show", versions[1])
    assert second["version"]["parents"] == [versions[0]]
    assert second["version"]["tags"] == ["Production"]

    # One environment: built for the first training, a cache hit for every later run.
    environments = [s["environment"] for s in sorted(shown.values(),
                                                     key=lambda s: s["created_at"])]
    assert environments[0]["hit"] is False
    assert all(e["hit"] is True for e in environments[1:]), environments
    assert len({e["key"] for e in environments}) == 1

    # Each model registered by a training started an evaluation on the data it learned from.
    models = cli.json("model", "list", "--project", "dataset_blogpost")
    assert isinstance(models, list) and len(models) == 2
    for training in trainings:
        [model] = [m for m in models if m["task_id"] == training["id"]]
        [evaluation] = [s for s in shown.values() if s["name"] == "evaluation"
                        and s["parameters"]["General/model_uri"] == model["uri"]]
        assert evaluation["parameters"]["General/dataset_id"] == \
            training["parameters"]["General/dataset_id"]
        assert 0.8 < training["metrics"]["accuracy"] < 1.0
        assert 0.8 < evaluation["metrics"]["eval_accuracy"] <= 1.0
        # The table row for this training shows its accuracy and model.
        row = re.search(rf"^occupancy \d\.\d\.\d +{training['id'][:12]} +"
                        rf"{training['metrics']['accuracy']:.3f} +occupancy {model['id'][:8]}",
                        output, re.MULTILINE)
        assert row, output
    assert "cache hit" in output and "built in" in output
    assert "recent firings" in output  # `retrain status` was left on screen

    # `retrain up` stopped: no daemon of this home is left.
    assert not (retrain_home / "up.json").exists()
    assert not (retrain_home / "redis.json").exists()
    assert "no running worker" in cli("health", "worker", expect=1).err
    assert "no running scheduler" in cli("health", "scheduler", expect=1).err
