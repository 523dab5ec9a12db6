"""The Python SDK with ClearML's names, on SQLite and PostgreSQL and the machine's Redis: the
labelling tool's upload, then the scenario users write (get the template, clone it with
overrides, enqueue it, read its parameters and models), and the CLI's errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator import Dataset, Model, Task
from orchestrator.errors import Conflict, NotFound, UserError
from tests.conftest import CLI
from tests.datasets.conftest import write_tree
from tests.tasks.conftest import Repo, raw_jobs


@pytest.fixture
def template(cli: CLI, git_repo: Repo, runtime: Any) -> str:
    return cli("task", "create", "--project", "sdk", "--name", "training", "--repo",
               str(git_repo.path), "--script", "train.py", "--queue", "cpu",
               "--param", "General/dataset_id=", "Args/epochs=10", "Args/lr=0.01",
               "--input", "data=${params.General/dataset_id}").out.strip()


def test_upload_button_makes_a_child_of_the_latest_version_created_on_first_use(
    runtime: Any, tmp_path: Path
) -> None:
    def upload(rows: str) -> Dataset:
        draft = Dataset.get(dataset_project="sdk", dataset_name="labels", auto_create=True,
                            writable_copy=True, runtime=runtime)
        assert not draft.is_final and draft.tags == []
        folder = write_tree(tmp_path / rows, {f"{rows}.csv": f"{rows}\n"})
        draft.add_files(folder)
        draft.finalize()
        return draft

    first = upload("first")
    assert first.parents == [] and first.version == "1.0.0"
    second = upload("second")
    assert second.parents == [first.id] and second.version == "1.0.1"
    assert second.list_files() == ["first.csv", "second.csv"]
    # Without writable_copy, the latest final version itself.
    assert Dataset.get(dataset_project="sdk", dataset_name="labels", runtime=runtime).id == \
        second.id
    # A dataset that exists but has no version with the tags is not created again.
    with pytest.raises(NotFound):
        Dataset.get(dataset_project="sdk", dataset_name="labels", dataset_tags=["Production"],
                    auto_create=True, runtime=runtime)
    with pytest.raises(NotFound):
        Dataset.get(dataset_project="sdk", dataset_name="missing", runtime=runtime)
    # A child of a draft cannot be made: the same Conflict the CLI prints.
    draft = Dataset.create("labels", "sdk", parent_datasets=[second], runtime=runtime)
    with pytest.raises(Conflict):
        Dataset.get(draft.id, writable_copy=True, runtime=runtime)


def test_get_clone_enqueue_then_parameters_inputs_and_models(
    cli: CLI, runtime: Any, template: str, machine_redis: str
) -> None:
    version = runtime.datasets.create("sdk", "labels")
    version = runtime.datasets.finalize(version.id).version.id

    source = Task.get("sdk/training", runtime=runtime)
    assert source.id == template and source.status == "draft"
    assert Task.get(project_name="sdk", task_name="training", runtime=runtime).id == template
    assert Task.get(template, runtime=runtime).get_parameters() == {
        "General/dataset_id": "", "Args/epochs": 10, "Args/lr": 0.01}

    run = Task.clone(source=source, parameter_overrides={
        "General/dataset_id": version, "Args/epochs": 3, "Args/lr": "0.5"})
    assert run.status == "draft" and run.parent == template
    assert run.get_parameters() == {"General/dataset_id": version, "Args/epochs": 3,
                                    "Args/lr": 0.5}
    Task.enqueue(run, queue_name="gpu", priority="high")
    assert run.status == "queued" and run.queue == "gpu" and run.get_status() == "queued"
    assert run.get_inputs()["data"]["version_id"] == version
    assert run.id in raw_jobs(machine_redis)

    registered = cli("model", "register", "--project", "sdk", "--name", "occupancy", "--uri",
                     "s3://bucket/m.pt", "--task", run.id, "--tags", "a", "b").out.strip()
    cli("model", "register", "--project", "sdk", "--name", "occupancy", "--uri",
        "s3://bucket/other.pt", "--tags", "a")
    assert [m.id for m in run.get_models()["output"]] == [registered]
    assert [m.id for m in Model.query(project_name="sdk", model_name="occupancy",
                                      tags=["a", "b"], runtime=runtime)] == [registered]
    assert len(Model.query(project_name="sdk", tags=["a"], runtime=runtime)) == 2
    assert len(Model.query(project_name="sdk", max_results=1, runtime=runtime)) == 1
    model = Model(registered, runtime=runtime)
    assert model.task == run.id and model.url == "s3://bucket/m.pt"
    task = model.get_task()
    assert task is not None and task.id == run.id
    assert model.lineage().template is not None and model.lineage().template.id == template
    assert [t.id for t in Task.get_tasks(dataset=version, runtime=runtime)] == [run.id]
    assert [t.id for t in Task.get_tasks(template=template, runtime=runtime)] == [run.id]


def test_sdk_errors_are_the_ones_the_cli_prints(
    cli: CLI, runtime: Any, template: str
) -> None:
    def printed(*args: str) -> str:
        return cli(*args, expect=2).err.removeprefix("retrain: error: ").strip()

    with pytest.raises(NotFound) as missing:
        Task.get("0" * 32, runtime=runtime)
    assert str(missing.value) == printed("task", "show", "0" * 32)
    with pytest.raises(UserError) as bad:
        Task.clone(source="sdk/training", parameter_overrides={"Args/epochs": "ten"},
                   runtime=runtime)
    assert str(bad.value) == printed("task", "clone", "sdk/training", "--param",
                                     "Args/epochs=ten")
    with pytest.raises(NotFound) as no_model:
        Model("f" * 32, runtime=runtime)
    assert str(no_model.value) == printed("model", "show", "f" * 32)
    run = Task.clone(source=template, runtime=runtime)
    run.abort()
    with pytest.raises(Conflict) as again:
        Task.enqueue(run)
    assert str(again.value) == printed("task", "enqueue", run.id)
    with pytest.raises(UserError, match=r"Task\.get needs task_id"):
        Task.get(project_name="sdk", runtime=runtime)
