"""Lineage both ways, driven through the CLI with a real scheduler and a real worker: from a
dataset version to the run it fired and the model that run registered, and back, on SQLite
and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.store import Store
from orchestrator.store.migrate import alembic_config
from tests.conftest import CLI
from tests.datasets.conftest import write_tree
from tests.tasks.conftest import Repo, run_git
from tests.triggers import conftest as trigger_fixtures
from tests.triggers.conftest import Loop

loop = trigger_fixtures.loop

TRAIN = """\
import os, pathlib
data = pathlib.Path(os.environ["RETRAIN_INPUT_DATA"])
print("training on", (data / "rows.csv").read_text().count("\\n"), "lines")
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "models" / "occupancy.txt").write_text("weights")
"""

TRIGGERS = """\
version: 1
triggers:
  - name: retrain-on-production-data
    on: {dataset: {project: lineage, name: "*", tags: [Production], event: [tagged]}}
    run:
      template: lineage/training
      queue: gpu
      overrides: {General/dataset_id: "${dataset.id}"}
  - name: evaluate-new-models
    on: {model: {project: lineage, event: registered}}
    run:
      template: lineage/evaluate
      queue: cpu
      overrides: {General/model_uri: "${model.uri}", General/dataset_id: "${model.inputs.data}"}
    allow_cycles: true
"""


def worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()",
                           "worker", *args], env=os.environ.copy(), capture_output=True,
                          text=True, timeout=170, check=False)


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in items}


def test_a_version_leads_to_its_run_and_model_and_back(
    cli: CLI, git_repo: Repo, database_url: str, machine_redis: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    (git_repo.path / "train.py").write_text(TRAIN)
    run_git(git_repo.path, "commit", "-qam", "train for real")
    template = cli("task", "create", "--project", "lineage", "--name", "training", "--repo",
                   str(git_repo.path), "--script", "train.py", "--queue", "gpu",
                   "--param", "General/dataset_id=",
                   "--input", "data=${params.General/dataset_id}").out.strip()
    cli("task", "create", "--project", "lineage", "--name", "evaluate", "--repo",
        str(git_repo.path), "--module", "pkg.evaluate", "--queue", "cpu",
        "--param", "General/model_uri=", "General/dataset_id=",
        "--input", "data=${params.General/dataset_id}")
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(TRIGGERS)
    runtime = Runtime()
    scheduler = Scheduler(runtime, triggers, reconcile_every=600)
    assert scheduler.reload(force=True)
    scheduler.tick()

    data = write_tree(tmp_path / "batch", {"rows.csv": "t,occupied\n1,0\n3,1\n"})
    version = cli("dataset", "create", "--project", "lineage", "--name", "occ").out.strip()
    cli("dataset", "add", "--id", version, "--files", str(data))
    cli("dataset", "finalize", "--id", version)
    cli("dataset", "tag", version, "Production")
    assert scheduler.tick().fired == 1
    [run] = cli.json("task", "list", "--status", "queued")
    done = worker("--queue", "gpu", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr
    scheduler.tick()  # applies the report: the model is registered, the evaluation fires
    [model] = cli.json("model", "list", "--project", "lineage")
    assert model["task_id"] == run["id"]
    [evaluation] = cli.json("task", "list", "--status", "queued")

    # The version -> the runs that used it (by input or as their trigger) and their models.
    shown = cli.json("dataset", "show", version)
    runs = by_id(shown["runs"])
    assert runs[run["id"]]["trigger_entity"] == {"kind": "dataset", "id": version}
    assert runs[run["id"]]["inputs"] == ["data"]
    assert runs[evaluation["id"]]["inputs"] == ["data"]  # scored on the data it came from
    assert runs[evaluation["id"]]["trigger_entity"] == {"kind": "model", "id": model["id"]}
    assert [m["id"] for m in shown["models"]] == [model["id"]]
    table = cli("dataset", "show", version).out
    assert run["id"] in table and model["id"] in table

    listed = by_id(cli.json("task", "list", "--dataset", version))
    assert set(listed) == {run["id"], evaluation["id"]}
    trained = listed[run["id"]]
    assert trained["parameters"] == {"General/dataset_id": version}
    assert trained["inputs"] == {"data": "${params.General/dataset_id}"}
    assert trained["resolved_inputs"]["data"]["version_id"] == version
    assert trained["trigger_entity"] == {"kind": "dataset", "id": version}
    assert trained["trigger_event"] is not None
    unknown = cli("task", "list", "--dataset", "0" * 32, expect=2)
    assert unknown.err.startswith(f"retrain: error: no dataset version '{'0' * 32}'")
    # By id: until templates stay templates (issue 13 item 1), `lineage/training` names the
    # newest completed task of that name, which is the run itself.
    assert set(by_id(cli.json("task", "list", "--template", template))) == {run["id"]}

    # The model -> its run, its template and the versions it was trained on.
    about = cli.json("model", "show", model["id"])
    assert about["run"]["id"] == run["id"] and about["template"]["id"] == template
    assert about["inputs"]["data"]["version_id"] == version
    table = cli("model", "show", model["id"]).out
    assert template in table and version in table

    # The run -> the models it registered.
    assert [m["id"] for m in cli.json("task", "show", run["id"])["models"]] == [model["id"]]
    assert model["id"] in cli("task", "show", run["id"]).out

    # The decisions, each with the id of what it was about.
    history = {h["trigger"]: h for h in cli.json("history")}
    assert history["retrain-on-production-data"]["entity_id"] == version
    assert history["retrain-on-production-data"]["task"] == run["id"]
    assert history["evaluate-new-models"]["entity_id"] == model["id"]
    assert history["evaluate-new-models"]["task"] == evaluation["id"]
    runtime.close()


def fire_with_input(loop: Loop, runtime: Runtime, git_repo: Repo) -> Scheduler:
    """The loop's trigger, with the template taking the version as its input `data`."""
    seed = loop.version(runtime, "seed")
    loop.cli("task", "create", "--project", "dataset_blogpost", "--name", "training",
             "--repo", str(git_repo.path), "--script", "train.py", "--queue", "gpu",
             "--param", "General/dataset_id=", "General/note=", "--input", f"data={seed}")
    loop.triggers.write_text(loop.triggers.read_text().replace(
        "      tags: [auto]\n", '      tags: [auto]\n      inputs: {data: "${dataset.id}"}\n'))
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    return scheduler


@pytest.mark.parametrize("loop", [("coalesce", 1)], indirect=True)
def test_task_show_lists_the_events_a_coalesced_run_absorbed(
    loop: Loop, database_url: str, git_repo: Repo
) -> None:
    runtime = Runtime()
    scheduler = fire_with_input(loop, runtime, git_repo)
    first, second, third = (loop.version(runtime, n) for n in ("first", "second", "third"))
    runtime.datasets.tag(first, ["Production"])
    scheduler.tick()
    [running] = loop.cli.json("task", "list", "--status", "queued", "--project", "dataset_*")
    runtime.tasks.start(running["id"], "gpu-box-1")  # busy: the next firings wait
    runtime.datasets.tag(second, ["Production"])
    scheduler.tick()
    runtime.datasets.tag(third, ["Production"])
    scheduler.tick()  # folded into the waiting run
    [waiting] = loop.cli.json("task", "list", "--status", "queued")

    shown = loop.cli.json("task", "show", waiting["id"])
    assert shown["trigger_entity"] == {"kind": "dataset", "id": third}
    assert shown["cause"]["entity"] == {"kind": "dataset", "id": third}
    [absorbed] = shown["absorbed_events"]
    assert absorbed["entity"] == {"kind": "dataset", "id": second}
    assert absorbed["kind"] == "dataset.version.tagged" and absorbed["name"] == "second"
    table = loop.cli("task", "show", waiting["id"]).out
    assert "absorbed events" in table and second in table and third in table
    # Re-pointed: the run now takes the newest version, and is found from it alone.
    assert [t["id"] for t in loop.cli.json("task", "list", "--dataset", third)] == [waiting["id"]]
    assert [t["id"] for t in loop.cli.json("task", "list", "--dataset", first)] == [running["id"]]
    runtime.close()


def test_the_migration_fills_in_the_lineage_of_existing_runs(
    loop: Loop, database_url: str, git_repo: Repo
) -> None:
    runtime = Runtime()
    scheduler = fire_with_input(loop, runtime, git_repo)
    version = loop.version(runtime, "occupancy")
    runtime.datasets.tag(version, ["Production"])
    assert scheduler.tick().fired == 1
    [fired] = loop.cli.json("task", "list", "--status", "queued")
    manual = loop.cli("task", "run", fired["parent"], "--input", f"data={version}").out.strip()
    before = by_id(loop.cli.json("task", "list", "--dataset", version))
    runtime.close()

    # Back to the schema before lineage (what today's main stores), then forward again.
    store = Store(database_url)
    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    store.dispose()

    after = by_id(loop.cli.json("task", "list", "--dataset", version))
    assert set(after) == set(before) and manual in after and len(after) == 2
    for task_id, task in after.items():
        assert task["trigger_entity"] == before[task_id]["trigger_entity"]
    assert after[fired["id"]]["trigger_entity"] == {"kind": "dataset", "id": version}
    assert after[manual]["trigger_entity"] is None
    shown = loop.cli.json("dataset", "show", version)
    assert {r["id"]: r["inputs"] for r in shown["runs"]} == {
        fired["id"]: ["data"], manual: ["data"]}
