"""The versioning loop a user runs, through the real CLI, on every backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchestrator.settings import Settings
from orchestrator.storage import open_storage
from orchestrator.store import Store
from orchestrator.store.events import read_events
from tests.conftest import CLI
from tests.datasets.conftest import write_tree


def stored_blobs() -> set[str]:
    return set(open_storage(Settings.load()).iter_hashes())


def event_log() -> list[tuple[str, str, list[str], dict[str, Any]]]:
    store = Store(Settings.load().database_url)
    try:
        with store.reader() as session:
            return [(e.kind, e.entity_id, e.tags, e.payload) for e in read_events(session, 0)]
    finally:
        store.dispose()


def test_version_tag_and_fetch_a_dataset(cli: CLI, backend: str, tmp_path: Path) -> None:
    data = write_tree(
        tmp_path / "batch",
        {
            "train/a.csv": "t,h\n1,2\n",
            "train/b.csv": "t,h\n3,4\n",
            "README.md": "occupancy sensor data\n",
        },
    )

    # First version: create, add a folder, finalize.
    v1 = cli("dataset", "create", "--project", "demo/sensors", "--name", "occupancy").out.strip()
    added = cli.json("dataset", "add", "--files", str(data))
    assert sorted(added["added"]) == ["README.md", "train/a.csv", "train/b.csv"]
    listing = cli.json("dataset", "list", "--id", v1)
    assert listing["file_count"] == 3
    assert listing["total_size"] == sum(
        len(t) for t in ["t,h\n1,2\n", "t,h\n3,4\n", "occupancy sensor data\n"]
    )
    before_close = stored_blobs()
    closed = cli.json("dataset", "close")
    assert closed["status"] == "final" and closed["version"] == "1.0.0"
    assert len(stored_blobs() - before_close) == 4  # three files + the manifest blob

    # search prints ids, and filters by tag.
    table = cli("dataset", "search", "--project", "demo/*").out
    assert v1 in table and "1.0.0" in table

    # Child: one file changed, one removed, one added, via sync; only new content uploads.
    (data / "train/b.csv").write_text("t,h\n3,5\n")
    (data / "README.md").unlink()
    (data / "train/c.csv").write_text("t,h\n7,8\n")
    v2 = cli(
        "dataset", "create", "--project", "demo/sensors", "--name", "occupancy", "--parents", v1
    ).out.strip()
    synced = cli.json("dataset", "sync", "--folder", str(data))
    assert (synced["added"], synced["modified"], synced["removed"]) == (
        ["train/c.csv"],
        ["train/b.csv"],
        ["README.md"],
    )
    before_child = stored_blobs()
    cli("dataset", "finalize", "--id", v2)
    assert len(stored_blobs() - before_child) == 3  # b.csv, c.csv and the manifest

    shown = cli.json("dataset", "show", v2)
    assert shown["version"]["version"] == "1.0.1"
    assert [e["id"] for e in shown["lineage"]] == [v2, v1]
    assert (shown["added"], shown["modified"], shown["removed"]) == (
        ["train/c.csv"],
        ["train/b.csv"],
        ["README.md"],
    )

    cli("dataset", "tag", v2, "Production", "reviewed")
    found = cli.json("dataset", "search", "--tags", "Production", "reviewed")
    assert [v["id"] for v in found] == [v2]
    cli("dataset", "untag", v2, "reviewed")
    cli("dataset", "publish", v2)

    # Fetch: read-only cached copy with the child's exact content.
    path = Path(
        cli(
            "dataset",
            "get",
            "--project",
            "demo/sensors",
            "--name",
            "occupancy",
            "--tags",
            "Production",
        ).out.strip()
    )
    files = {p.relative_to(path).as_posix(): p.read_text() for p in path.rglob("*") if p.is_file()}
    assert files == {
        "train/a.csv": "t,h\n1,2\n",
        "train/b.csv": "t,h\n3,5\n",
        "train/c.csv": "t,h\n7,8\n",
    }
    assert not os.access(path / "train/a.csv", os.W_OK) or os.geteuid() == 0
    assert (path / "train/a.csv").stat().st_mode & 0o222 == 0

    # A writable copy elsewhere.
    copy = Path(cli("dataset", "get", v1, "--copy", str(tmp_path / "work")).out.strip())
    (copy / "README.md").write_text("edited")
    assert (copy / "train/b.csv").read_text() == "t,h\n3,4\n"

    # The event log: every change once, in order, with the tags it had then.
    log = event_log()
    assert [(kind, entity) for kind, entity, _, _ in log] == [
        ("dataset.version.created", v1),
        ("dataset.version.finalized", v1),
        ("dataset.version.created", v2),
        ("dataset.version.finalized", v2),
        ("dataset.version.tagged", v2),
        ("dataset.version.untagged", v2),
        ("dataset.version.published", v2),
    ]
    assert log[4][2] == ["Production", "reviewed"] and log[4][3]["added"] == [
        "Production",
        "reviewed",
    ]
    assert log[5][2] == ["Production"]
    assert log[3][3]["version"] == "1.0.1" and log[3][3]["parents"] == [v1]


def test_merged_parents_later_parent_wins(cli: CLI, tmp_path: Path) -> None:
    def version(name: str, files: dict[str, str]) -> str:
        folder = write_tree(tmp_path / name, files)
        vid = cli("dataset", "create", "--project", "p", "--name", name).out.strip()
        cli("dataset", "add", "--id", vid, "--files", str(folder))
        cli("dataset", "finalize", "--id", vid)
        return vid

    left = version("left", {"shared.txt": "left", "only_left.txt": "L"})
    right = version("right", {"shared.txt": "right", "only_right.txt": "R"})
    merged = cli(
        "dataset", "create", "--project", "p", "--name", "merged", "--parents", left, right
    ).out.strip()
    files = {f["path"]: f for f in cli.json("dataset", "list", "--id", merged)["files"]}
    assert set(files) == {"shared.txt", "only_left.txt", "only_right.txt"}
    right_files = {f["path"]: f for f in cli.json("dataset", "list", "--id", right)["files"]}
    assert files["shared.txt"]["sha256"] == right_files["shared.txt"]["sha256"]

    removed = cli.json("dataset", "remove", "only_*", "--id", merged)
    assert removed["removed"] == ["only_left.txt", "only_right.txt"]
    cli("dataset", "finalize", "--id", merged)
    assert cli.json("dataset", "show", merged)["version"]["parents"] == [left, right]


def test_add_with_globs_and_dataset_path(cli: CLI, tmp_path: Path) -> None:
    write_tree(tmp_path / "in", {"x.csv": "1", "y.csv": "2", "notes.txt": "n", "deep/z.csv": "3"})
    vid = cli(
        "dataset", "create", "--project", "p", "--name", "n", "--version", "2.0.0", "--tags", "raw"
    ).out.strip()
    cli(
        "dataset",
        "add",
        "--files",
        str(tmp_path / "in/*.csv"),
        str(tmp_path / "in/deep"),
        "--dataset-path",
        "tables",
    )
    paths = [f["path"] for f in cli.json("dataset", "list", "--id", vid)["files"]]
    assert paths == ["tables/x.csv", "tables/y.csv", "tables/z.csv"]
    assert cli.json("dataset", "show", vid)["version"]["version"] == "2.0.0"
    # The next automatic version follows the highest one.
    cli("dataset", "finalize", "--id", vid)
    child = cli.json("dataset", "create", "--project", "p", "--name", "n", "--parents", vid)
    assert child["version"] == "2.0.1" and child["tags"] == []


def test_add_sync_and_remove_print_the_version_id_on_stdout(cli: CLI, tmp_path: Path) -> None:
    """As every changing command does, so `id=$(retrain dataset add ...)` works; the summary
    stays on stderr."""
    write_tree(tmp_path / "in", {"a.csv": "1", "b.csv": "2"})
    vid = cli("dataset", "create", "--project", "p", "--name", "n").out.strip()
    for args in (["add", "--files", str(tmp_path / "in/a.csv")],
                 ["sync", "--folder", str(tmp_path / "in")],
                 ["remove", "b.csv"]):
        result = cli("dataset", *args)
        assert result.out == f"{vid}\n", (args, result.out)
        assert f"draft {vid}:" in result.err
