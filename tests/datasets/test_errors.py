"""User mistakes: one clear line naming what and where, exit 2, and nothing changed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestrator.settings import Settings
from orchestrator.storage import open_storage
from orchestrator.store import Store
from orchestrator.store.models import DatasetVersion, Event, VersionFile, VersionTag
from tests.conftest import CLI
from tests.datasets.conftest import write_tree


def snapshot() -> tuple[object, ...]:
    """Everything a mistake must leave untouched: store rows, events and stored blobs."""
    settings = Settings.load()
    store = Store(settings.database_url)
    try:
        with store.reader() as s:
            versions = s.execute(
                select(
                    DatasetVersion.id,
                    DatasetVersion.status,
                    DatasetVersion.file_count,
                    DatasetVersion.total_size,
                ).order_by(DatasetVersion.id)
            ).all()
            files = s.execute(
                select(VersionFile.version_id, VersionFile.path, VersionFile.sha256).order_by(
                    VersionFile.path
                )
            ).all()
            tags = s.execute(select(VersionTag.version_id, VersionTag.tag)).all()
            events = s.scalar(select(func.count()).select_from(Event))
    finally:
        store.dispose()
    blobs = sorted(open_storage(settings).iter_hashes())
    return (versions, files, sorted(tags), events, blobs)


@pytest.fixture
def versions(cli: CLI, tmp_path: Path) -> tuple[str, str]:
    """A final version with one tag, and a draft child holding one extra staged file."""
    data = write_tree(tmp_path / "data", {"a.txt": "a", "b/c.txt": "c"})
    final = cli("dataset", "create", "--project", "p", "--name", "n").out.strip()
    cli("dataset", "add", "--files", str(data))
    cli("dataset", "finalize")
    cli("dataset", "tag", final, "Production")
    draft = cli(
        "dataset", "create", "--project", "p", "--name", "n", "--parents", final
    ).out.strip()
    cli("dataset", "add", "--files", str(write_tree(tmp_path / "more", {"d.txt": "d"})))
    return final, draft


def test_a_final_version_refuses_every_change(
    cli: CLI, backend: str, versions: tuple[str, str], tmp_path: Path
) -> None:
    final, _ = versions
    before = snapshot()
    for args in (
        ["dataset", "add", "--id", final, "--files", str(tmp_path / "data")],
        ["dataset", "remove", "a.txt", "--id", final],
        ["dataset", "sync", "--id", final, "--folder", str(tmp_path / "data")],
        ["dataset", "finalize", "--id", final],
    ):
        err = cli(*args, expect=2).err
        assert err.startswith("retrain: error: ") and err.count("\n") == 1, err
        assert final in err and "final" in err
    assert snapshot() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset", "show", "0" * 32], "no dataset version '00000000000000000000000000000000'"),
        (["dataset", "add", "--files", "missing.txt"], "no such file or directory: missing.txt"),
        (["dataset", "add", "--files", "nothing-*.csv"], "nothing matches 'nothing-*.csv'"),
        (["dataset", "add", "--files", "data", "--dataset-path", "../up"], "escapes"),
        (["dataset", "remove", "zzz*"], "matches 'zzz*'"),
        (
            ["dataset", "create", "--project", "p", "--name", "n", "--version", "1.0.0"],
            "already has version 1.0.0",
        ),
        (["dataset", "create", "--project", "p//q", "--name", "n"], "--project"),
        (
            ["dataset", "create", "--project", "p", "--name", "n", "--parents", "DRAFT"],
            "is a draft; finalize it first",
        ),
        (["dataset", "create", "--project", "p", "--name", "n", "--metadata", "[1]"], "--metadata"),
        (["dataset", "untag", "FINAL", "Nope"], "has no tag Nope (its tags: Production)"),
        (["dataset", "publish", "DRAFT"], "finalize it before publishing"),
        (["dataset", "get", "DRAFT"], "finalize it before fetching"),
        (
            ["dataset", "get", "--project", "p", "--name", "n", "--tags", "Staging"],
            "no final version of dataset 'p/n tagged Staging'",
        ),
        (["dataset", "search", "--status", "open"], "--status"),
        (["dataset", "tag", "FINAL", "has space"], "tag 'has space' is not valid"),
        # A byte that is not UTF-8 (a shell's $'\\xff', arrives as a lone surrogate) was a
        # UnicodeEncodeError traceback from the database driver (new-user pass "nu").
        (["dataset", "tag", "FINAL", "a\udcff"], "'a\\udcff' is not valid UTF-8"),
        (["dataset", "tag", "a\udcff", "X"], "'a\\udcff' is not valid UTF-8"),
        (["dataset", "show", "a\udcff"], "'a\\udcff' is not valid UTF-8"),
        (["dataset", "search", "--tags", "\udcff"], "'\\udcff' is not valid UTF-8"),
        # Past what the database's integers hold: OverflowError / NumericValueOutOfRange.
        (["dataset", "search", "--limit", "9" * 20], "Invalid value for '--limit'"),
    ],
)
def test_mistakes_name_the_problem_and_change_nothing(
    cli: CLI, versions: tuple[str, str], args: list[str], message: str
) -> None:
    final, draft = versions
    args = [a.replace("FINAL", final).replace("DRAFT", draft) for a in args]
    before = snapshot()
    err = cli(*args, expect=2).err
    assert message in err, err
    assert snapshot() == before


def test_symlink_out_of_an_added_folder_is_refused(
    cli: CLI, versions: tuple[str, str], tmp_path: Path
) -> None:
    outside = write_tree(tmp_path / "secret", {"key.pem": "private"})
    folder = write_tree(tmp_path / "linked", {"ok.txt": "ok"})
    (folder / "leak.pem").symlink_to(outside / "key.pem")
    before = snapshot()
    err = cli("dataset", "add", "--files", str(folder), expect=2).err
    assert "leak.pem" in err and "outside" in err
    err = cli("dataset", "sync", "--folder", str(folder), expect=2).err
    assert "leak.pem" in err
    assert snapshot() == before
    # A symlink that stays inside the folder is fine.
    (folder / "leak.pem").unlink()
    (folder / "alias.txt").symlink_to(folder / "ok.txt")
    added = cli.json("dataset", "add", "--files", str(folder))
    assert sorted(added["added"]) == ["alias.txt", "ok.txt"]


def test_bad_settings_name_the_variable(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", "mysql://user:hunter2@db/retrain")
    err = cli("dataset", "search", expect=2).err
    assert "RETRAIN_DATABASE_URL" in err and "mysql" in err and "hunter2" not in err
    monkeypatch.delenv("RETRAIN_DATABASE_URL")
    monkeypatch.setenv("RETRAIN_STORAGE_URL", "gs://bucket")
    assert "RETRAIN_STORAGE_URL" in cli("dataset", "search", expect=2).err


def test_unreachable_database_is_one_line(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RETRAIN_DATABASE_URL", f"postgresql://retrain:hunter2@127.0.0.1:{closed_port()}/x"
    )
    err = cli("dataset", "search", expect=2).err
    assert "cannot use the database postgresql://retrain:***@127.0.0.1" in err
    assert "hunter2" not in err


def test_unreachable_s3_leaves_the_draft_a_draft(
    cli: CLI,
    s3_bucket_url: str,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RETRAIN_STORAGE_URL", s3_bucket_url)
    monkeypatch.setenv("RETRAIN_S3_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    draft = cli("dataset", "create", "--project", "p", "--name", "n").out.strip()
    cli("dataset", "add", "--files", str(write_tree(tmp_path / "d", {"x": "1"})))
    err = cli("dataset", "finalize", expect=2).err
    assert "cannot reach S3 endpoint http://127.0.0.1:" in err
    assert cli.json("dataset", "show", draft)["version"]["status"] == "draft"
    # With the real endpoint, the same draft finalizes.
    monkeypatch.setenv("RETRAIN_S3_ENDPOINT_URL", s3_endpoint)
    assert cli.json("dataset", "finalize")["status"] == "final"


def test_a_file_changed_after_add_is_not_finalized(cli: CLI, tmp_path: Path) -> None:
    data = write_tree(tmp_path / "d", {"x.txt": "one"})
    draft = cli("dataset", "create", "--project", "p", "--name", "n").out.strip()
    cli("dataset", "add", "--files", str(data))
    (data / "x.txt").write_text("changed!")
    err = cli("dataset", "finalize", expect=2).err
    assert "x.txt" in err and "changed since it was added" in err
    assert cli.json("dataset", "show", draft)["version"]["status"] == "draft"
    cli("dataset", "add", "--files", str(data))
    cli("dataset", "finalize")
    copy = Path(cli("dataset", "get", draft).out.strip())
    assert (copy / "x.txt").read_text() == "changed!"


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


STORE_COMMANDS = (["task", "list"], ["model", "list"], ["status", "--json"],
                  ["dataset", "search"], ["task", "show", "x"], ["history"])


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://"])
def test_an_in_memory_database_is_refused(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """New-user pass on issue 15: an in-memory SQLite URL gave a traceback (no such table) on
    the lean paths; each process would have its own empty store anyway."""
    monkeypatch.setenv("RETRAIN_DATABASE_URL", url)
    for command in STORE_COMMANDS:
        err = cli(*command, expect=2).err
        assert "RETRAIN_DATABASE_URL" in err and "in-memory" in err, (command, err)


def test_a_database_retrain_cannot_create_its_tables_in_is_one_line(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    """New-user pass on issue 15: a search_path naming no schema (as a role without CREATE
    on the public schema gets) gave alembic's traceback."""
    url = f"{postgres_url}?options=-csearch_path%3Dnosuchschema"
    monkeypatch.setenv("RETRAIN_DATABASE_URL", url)
    for command in STORE_COMMANDS:
        err = cli(*command, expect=2).err
        assert "cannot create retrain's tables in the database" in err, (command, err)
        assert "no schema has been selected" in err and len(err.strip().splitlines()) == 1
