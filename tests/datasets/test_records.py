"""`dataset tag` and `dataset search` on the bare database driver (orchestrator.datasets.records
through orchestrator.store.lean): the same records as the ORM's, the tag and its event in one
transaction, the store's SQLite settings, and anything unusual left to the full store."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestrator.datasets import records
from orchestrator.store import lean
from orchestrator.store.revision import SCHEMA_REVISION
from tests.conftest import CLI


def _versions(rt: Any, tmp_path: Path) -> tuple[str, str]:
    """A final version and a draft child of it with tags, metadata and a description."""
    (tmp_path / "a.csv").write_text("a\n1\n")
    ds = rt.datasets
    parent = ds.create("team/area", "d", tags=["b", "A"], metadata={"source": "lab", "n": 2})
    ds.add_files(parent.id, [str(tmp_path / "a.csv")])
    ds.finalize(parent.id)
    child = ds.create("team/area", "d", parents=[parent.id], description="more", tags=["z"])
    return parent.id, child.id


def test_records_are_what_the_orm_reads(runtime: Any, tmp_path: Path) -> None:
    """The SQL path and the ORM mapping agree field for field, on SQLite and PostgreSQL."""
    from orchestrator.datasets import queries
    from orchestrator.datasets.views import VersionInfo

    parent, child = _versions(runtime, tmp_path)
    url = runtime.settings.database_url
    with runtime.store.reader() as session:
        orm = {
            vid: VersionInfo.of(queries.load_version(session, vid)).model_dump(mode="json")
            for vid in (parent, child)
        }
    with lean.connect(url) as conn:
        assert records.load(conn, parent) == orm[parent]
        assert records.load(conn, child) == orm[child]
        assert records.search(conn) == [orm[child], orm[parent]]  # newest first
        assert records.search(conn, tags=["A", "b"]) == [orm[parent]]
        assert records.search(conn, project="team/*", status="draft") == [orm[child]]
        assert records.search(conn, name="other") == []
    assert orm[child]["manifest_sha256"] is None and orm[parent]["manifest_sha256"]
    assert [v.model_dump(mode="json") for v in runtime.datasets.search(limit=1)] == [orm[child]]


def test_a_tag_and_its_event_commit_together(runtime: Any, tmp_path: Path) -> None:
    from orchestrator.store.events import read_events

    parent, _ = _versions(runtime, tmp_path)
    url = runtime.settings.database_url
    with runtime.store.reader() as session:
        before = len(read_events(session, 0))
    with pytest.raises(RuntimeError), lean.writer(url) as conn:
        records.tag(conn, parent, ["Production"])
        raise RuntimeError("the command died before its commit")
    assert runtime.datasets.get(parent).tags == ["A", "b"]
    with lean.writer(url) as conn:
        record, wrote = records.tag(conn, parent, ["Production", "A"])
    assert wrote and record["tags"] == ["A", "Production", "b"]
    with lean.writer(url) as conn:
        assert records.tag(conn, parent, ["A"]) == (record, False)  # nothing new, no event
    assert runtime.datasets.get(parent).tags == ["A", "Production", "b"]
    with runtime.store.reader() as session:
        events = read_events(session, 0)[before:]
    assert [(e.kind, e.entity_id, e.tags) for e in events] == [
        ("dataset.version.tagged", parent, ["A", "Production", "b"])
    ]
    assert events[0].payload == {
        "version": "1.0.0",
        "status": "final",
        "published": False,
        "manifest_sha256": record["manifest_sha256"],
        "added": ["Production"],
    }
    age = dt.datetime.now(dt.timezone.utc) - events[0].created_at
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=10)


def test_create_through_the_driver_is_what_the_orm_reads(runtime: Any, tmp_path: Path) -> None:
    """A draft made on the bare driver: parents' files merged (the later parent wins), its
    record as the ORM reads it back, its event in its transaction."""
    from orchestrator.datasets import queries
    from orchestrator.datasets.views import VersionInfo
    from orchestrator.errors import Conflict
    from orchestrator.store.events import read_events

    ds = runtime.datasets
    finals = []
    for text in ("one", "two"):
        (tmp_path / "same.csv").write_text(text)
        (tmp_path / f"{text}.csv").write_text(text)
        v = ds.create("p", "src")
        ds.add_files(v.id, [str(tmp_path / "same.csv"), str(tmp_path / f"{text}.csv")])
        finals.append(ds.finalize(v.id).version)
    url = runtime.settings.database_url
    with lean.writer(url) as conn:
        record, wrote = records.create(
            conn,
            "team/x",
            "merged",
            parents=[f.id for f in finals],
            tags=["t"],
            metadata={"k": [1]},
            description="d",
        )
    assert wrote and record["version"] == "1.0.0" and record["file_count"] == 3
    with runtime.store.reader() as session:
        row = queries.load_version(session, record["id"])
        assert VersionInfo.of(row).model_dump(mode="json") == record
        files = queries.load_manifest(session, record["id"])
        event = read_events(session, 0)[-1]
    assert files["same.csv"].sha256 == queries_sha(runtime, finals[1].id, "same.csv")
    assert (event.kind, event.entity_id, event.tags) == (
        "dataset.version.created",
        record["id"],
        ["t"],
    )
    assert event.payload == {
        "version": "1.0.0",
        "status": "draft",
        "published": False,
        "manifest_sha256": None,
        "parents": [f.id for f in finals],
        "file_count": 3,
    }
    with lean.writer(url) as conn:
        assert records.create(conn, "team/x", "merged")[0]["version"] == "1.0.1"
    with pytest.raises(Conflict, match=r"already has version 1\.0\.1"), lean.writer(url) as conn:
        records.create(conn, "team/x", "merged", version="1.0.1")
    # The ORM service runs the same SQL.
    assert ds.create("team/x", "merged").version == "1.0.2"


def queries_sha(runtime: Any, version_id: str, path: str) -> str:
    from orchestrator.datasets import queries

    with runtime.store.reader() as session:
        return queries.load_manifest(session, version_id)[path].sha256


def test_the_sqlite_writer_runs_as_the_store_does(cli: CLI, retrain_home: Path) -> None:
    cli("dataset", "create", "--project", "p", "--name", "d")
    with lean.writer(f"sqlite:///{retrain_home / 'retrain.db'}") as conn:
        assert conn.in_transaction  # BEGIN IMMEDIATE: it holds the write lock from the start
        settings = {
            p: conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("foreign_keys", "busy_timeout", "journal_mode", "synchronous")
        }
        assert settings == {
            "foreign_keys": 1,
            "busy_timeout": 30_000,
            "journal_mode": "wal",
            "synchronous": 1,
        }
        with pytest.raises(sqlite3.IntegrityError):
            lean.execute(conn, records.INSERT_TAG_SQL, ["no-such-version", "x"])


def test_an_older_or_missing_store_is_left_to_the_full_store(cli: CLI, retrain_home: Path) -> None:
    path = retrain_home / "retrain.db"
    with pytest.raises(lean.Unavailable), lean.writer(f"sqlite:///{path}"):
        pass
    assert not path.exists()  # the full store creates and migrates it, not the lean path
    version = cli("dataset", "create", "--project", "p", "--name", "d").out.strip()
    # Back to the schema before 0010 (the downgrades of 0011 and 0010), as an older release
    # left a store.
    with sqlite3.connect(path) as conn:
        for column in ("reports_signed", "reports_refused", "last_refused_at",
                       "last_refused_reason"):
            conn.execute(f"ALTER TABLE scheduler_state DROP COLUMN {column}")
        conn.execute("ALTER TABLE tasks DROP COLUMN logged_params")
        conn.execute("DROP TABLE metric_series")
        conn.execute("UPDATE alembic_version SET version_num = '0009'")
    with pytest.raises(lean.Unavailable), lean.writer(f"sqlite:///{path}"):
        pass
    assert cli.json("dataset", "tag", version, "x")["tags"] == ["x"]  # type: ignore[index]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (SCHEMA_REVISION,)
        ]
    found = cli.json("dataset", "search", "--tags", "x")
    assert [v["id"] for v in found] == [version]  # type: ignore[union-attr,index]


def test_cli_errors_stay_one_line(cli: CLI, database_url: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    version = cli("dataset", "create", "--project", "p", "--name", "d").out.strip()
    for args, message in [
        (["tag", "nope", "x"], "no dataset version 'nope' (list versions with"),
        (["tag", version, "a b"], "tag 'a b' is not valid"),
        (["search", "--status", "done"], "--status: 'done' is not draft or final"),
        (["create", "--project", "p", "--name", "d", "--version", "1.0.0"], "already has"),
        (["create", "--project", "p", "--name", "d", "--parents", "nope"], "'nope'"),
        (["create", "--project", "p", "--name", "d", "--parents", version], "is a draft"),
        (["create", "--project", "/", "--name", "d"], "--project: '/' is not"),
    ]:
        err = cli("dataset", *args, expect=2).err
        assert err.startswith("retrain: error: ") and message in err, err
        assert err.count("\n") == 1, err
    assert cli("dataset", "tag", version, "x").out.strip() == version


def test_show_is_the_same_on_both_paths(
    runtime: Any, tmp_path: Path, cli: CLI, monkeypatch: Any
) -> None:
    """`dataset show` on the bare driver answers what the full store answers: a child of two
    parents (the later wins on a shared path), its lineage and its changes."""
    from orchestrator.tasks.lineage import version_usage

    ds = runtime.datasets
    finals = []
    for text in ("one", "two"):
        (tmp_path / "same.csv").write_text(text)
        (tmp_path / f"{text}.csv").write_text(text * 3)
        v = ds.create("p", "src")
        ds.add_files(v.id, [str(tmp_path / "same.csv"), str(tmp_path / f"{text}.csv")])
        finals.append(ds.finalize(v.id).version)
    child = ds.create("p", "child", parents=[f.id for f in finals])
    (tmp_path / "same.csv").write_text("three")
    (tmp_path / "new.csv").write_text("new")
    ds.add_files(child.id, [str(tmp_path / "same.csv"), str(tmp_path / "new.csv")])
    ds.remove_files(child.id, "one.csv")
    shown = cli.json("dataset", "show", child.id)
    full = {
        **ds.show(child.id).model_dump(mode="json"),
        **version_usage(runtime.store, child.id).model_dump(mode="json"),
    }
    assert shown == full
    assert (shown["added"], shown["modified"], shown["removed"]) == (  # type: ignore[index]
        ["new.csv"],
        ["same.csv"],
        ["one.csv"],
    )
    assert shown["added_bytes"] == len("new") + len("three")  # type: ignore[index]
    assert [(e["label"], e["depth"]) for e in shown["lineage"]] == [  # type: ignore[index]
        ("p/child 1.0.0", 0),
        ("p/src 1.0.0", 1),
        ("p/src 1.0.1", 1),
    ]
    assert cli("dataset", "show", "nope", expect=2).err.startswith(
        "retrain: error: no dataset version 'nope'"
    )


def test_add_is_the_same_on_both_paths(
    runtime: Any, tmp_path: Path, cli: CLI, monkeypatch: Any
) -> None:
    """`dataset add` on the bare driver stages what the full store stages, and says so alike."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("a")
    (tmp_path / "in" / "b.csv").write_text("bb")
    drafts = [runtime.datasets.create("p", "d").id for _ in range(2)]
    lean_out = cli.json("dataset", "add", "--id", drafts[0], "--files", "in")
    full_out = runtime.datasets.add_files(drafts[1], ["in"]).model_dump(mode="json")
    assert lean_out == {**full_out, "version_id": drafts[0]}
    assert lean_out["added"] == ["a.csv", "b.csv"] and lean_out["total_size"] == 3  # type: ignore[index]
    (tmp_path / "in" / "b.csv").write_text("changed")
    again = cli.json("dataset", "add", "--id", drafts[0], "--files", "in", "--dataset-path", "x")
    assert again["added"] == ["x/a.csv", "x/b.csv"]  # type: ignore[index]
    again = cli.json("dataset", "add", "--id", drafts[0], "--files", "in")
    assert (again["modified"], again["unchanged"], again["file_count"]) == (  # type: ignore[index]
        ["b.csv"],
        1,
        4,
    )
    with runtime.store.reader() as session:
        from orchestrator.datasets import queries

        files = queries.load_manifest(session, drafts[0])
        row = queries.load_version(session, drafts[0])
    assert (row.file_count, row.total_size) == (4, 1 + 7 + 1 + 7)
    assert sorted(files) == ["a.csv", "b.csv", "x/a.csv", "x/b.csv"]
    # The draft closes with what was staged last.
    closed = cli.json("dataset", "close", "--id", drafts[0])
    assert closed["status"] == "final" and closed["file_count"] == 4  # type: ignore[index]
    err = cli("dataset", "add", "--id", drafts[0], "--files", "in", expect=2).err
    assert "is final and cannot change" in err and err.count("\n") == 1, err


def test_the_plain_tag_runs_without_typer_and_answers_as_typer_does(cli: CLI) -> None:
    from orchestrator.cli.lean import fast_command

    for args in (
        ["dataset", "tag", "v"],  # no tag: typer says what is missing
        ["dataset", "tag", "v", "x", "--help"],
        ["dataset", "tag", "v", "x", "--json", "--json"],
        ["dataset", "tag", "v", "--", "x"],
        ["dataset", "untag", "v", "x"],
        ["dataset", "tags", "v", "x"],
    ):
        assert fast_command(args) is None, args
    assert fast_command(["dataset", "tag", "v", "x", "--json", "y"]) is not None
    version = cli("dataset", "create", "--project", "p", "--name", "d").out.strip()
    fast = cli("dataset", "tag", version, "a")
    typer = cli("dataset", "tag", version, "--", "b")  # `--`: only typer parses that
    assert fast.out == typer.out == f"{version}\n"
    assert (fast.err, typer.err) == ("p/d 1.0.0 tags: a\n", "p/d 1.0.0 tags: a, b\n")
    as_json = [
        cli.json("dataset", "tag", version, "c"),
        json.loads(cli("dataset", "tag", "--json", "--", version, "c").out),
    ]
    assert as_json[0] == as_json[1] and as_json[0]["tags"] == ["a", "b", "c"]  # type: ignore[index]
    err = cli("dataset", "tag", "nope", "x", expect=2).err
    hint = "list versions with: retrain dataset search"
    assert err == f"retrain: error: no dataset version 'nope' ({hint})\n"
    assert "Missing argument" in cli("dataset", "tag", version, expect=2).err


def test_untag_publish_and_list_are_the_same_on_both_paths(
    runtime: Any, tmp_path: Path, cli: CLI
) -> None:
    """`dataset untag`, `publish` and `list` on the bare driver answer, refuse and record what
    the full store does: two like versions, one changed through each path."""
    from orchestrator.store.events import read_events

    (tmp_path / "in").mkdir()
    for name in ("a.csv", "b.txt", "c.csv"):
        (tmp_path / "in" / name).write_text(name)
    ds = runtime.datasets
    pair = []
    for _ in range(2):
        v = ds.create("p", "d", tags=["x", "y", "z"])
        ds.add_files(v.id, [str(tmp_path / "in")])
        pair.append(ds.finalize(v.id).version.id)
    lean_id, full_id = pair
    draft = ds.create("p", "d").id

    def same(out: Any, full: Any) -> None:
        own = {k: out[k] for k in ("id", "version", "created_at", "finalized_at")}
        own["manifest_sha256"] = out["manifest_sha256"]  # the manifest names its version
        assert out == {**full.model_dump(mode="json"), **own} and out["id"] == lean_id

    with runtime.store.reader() as session:
        before = len(read_events(session, 0))
    same(cli.json("dataset", "untag", lean_id, "z", "x"), ds.untag(full_id, ["x", "z"]))
    assert cli("dataset", "untag", lean_id, "y").out.strip() == lean_id
    ds.untag(full_id, ["y"])
    same(cli.json("dataset", "publish", lean_id), ds.publish(full_id))
    same(cli.json("dataset", "publish", lean_id), ds.publish(full_id))  # again: no event
    with runtime.store.reader() as session:
        events = read_events(session, before)
    own = {"version": "-", "manifest_sha256": "-"}
    kinds = {
        vid: [(e.kind, e.tags, {**e.payload, **own}) for e in events if e.entity_id == vid]
        for vid in pair
    }
    assert [k for k, _, _ in kinds[lean_id]] == [
        "dataset.version.untagged",
        "dataset.version.untagged",
        "dataset.version.published",
    ]
    assert kinds[lean_id] == kinds[full_id]
    assert kinds[lean_id][0][2]["removed"] == ["x", "z"]

    listed = cli.json("dataset", "list", "--id", lean_id, "--filter", "*.csv")
    assert listed == {
        "version_id": lean_id,
        "files": [f.__dict__ for f in ds.list_files(full_id, "*.csv")],
        "file_count": 2,
        "total_size": len("a.csv") + len("c.csv"),
    }
    assert [f["path"] for f in listed["files"]] == ["a.csv", "c.csv"]  # type: ignore[index]
    assert "2 file(s)" in cli("dataset", "list", "--id", lean_id, "--filter", "*.csv").err

    for args, message in [
        (["untag", lean_id, "gone"], f"version {lean_id} has no tag gone (its tags: none)"),
        (["untag", "nope", "x"], "no dataset version 'nope'"),
        (["publish", draft], f"version {draft} is a draft; finalize it before publishing"),
        (["publish", "nope"], "no dataset version 'nope'"),
        (["list", "--id", "nope"], "no dataset version 'nope'"),
    ]:
        err = cli("dataset", *args, expect=2).err
        assert err.startswith("retrain: error: ") and message in err, err
        assert err.count("\n") == 1, err
    with runtime.store.reader() as session:
        assert len(read_events(session, before)) == len(events)  # refusals wrote nothing
