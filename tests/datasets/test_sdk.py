"""`orchestrator.Dataset`: the Python API with ClearML's names, on the same store as the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import Dataset, Runtime
from orchestrator.errors import Conflict
from tests.conftest import CLI
from tests.datasets.conftest import write_tree


def test_sdk_versions_a_folder_and_the_cli_sees_it(cli: CLI, tmp_path: Path) -> None:
    runtime = Runtime()
    data = write_tree(tmp_path / "data", {"a.csv": "1", "b.csv": "2", "img/x.png": "png"})
    first = Dataset.create(
        dataset_name="occupancy", dataset_project="blog", dataset_tags=["raw"], runtime=runtime
    )
    assert first.add_files(data) == 3
    assert first.remove_files("img") == 1
    assert first.list_files() == ["a.csv", "b.csv"]
    first.finalize()
    assert first.is_final and first.version == "1.0.0"
    with pytest.raises(Conflict):
        first.add_files(data)

    (data / "b.csv").write_text("22")
    child = Dataset.create(
        dataset_name="occupancy", dataset_project="blog", parent_datasets=[first], runtime=runtime
    )
    assert child.sync_folder(data, dataset_path="v") == (3, 0, 0)
    assert child.remove_files("a.csv") == 1
    child.finalize()
    child.add_tags(["Production", "reviewed"])
    child.remove_tags("reviewed")
    child.publish()

    newest = Dataset.get(
        dataset_project="blog",
        dataset_name="occupancy",
        dataset_tags=["Production"],
        runtime=runtime,
    )
    assert newest.id == child.id and newest.tags == ["Production"]
    assert newest.parents == [first.id]
    local = Path(newest.get_local_copy())
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "b.csv",
        "v/a.csv",
        "v/b.csv",
        "v/img/x.png",
    ]
    assert (local / "v/b.csv").read_text() == "22" and (local / "b.csv").read_text() == "2"
    mutable = Path(newest.get_mutable_local_copy(tmp_path / "work"))
    (mutable / "b.csv").write_text("edited")
    assert (local / "b.csv").read_text() == "2"

    found = cli.json("dataset", "search", "--project", "blog", "--tags", "Production")
    assert [v["id"] for v in found] == [child.id]
    runtime.close()
