"""`storage gc` frees exactly what no row refers to, and nothing a version or a run needs."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from orchestrator.runtime import Runtime
from orchestrator.scheduler.ingest import Ingest
from orchestrator.settings import Settings
from orchestrator.storage import (
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    open_storage,
    sha256_bytes,
)
from tests.conftest import CLI
from tests.datasets.conftest import write_tree
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, machine_redis_url, run_git

git_repo = task_fixtures.git_repo


def test_gc_frees_blobs_of_deleted_drafts_and_stale_partials(
    cli: CLI, backend: str, tmp_path: Path
) -> None:
    kept = write_tree(tmp_path / "kept", {"a.txt": "keep me", "b.txt": "shared"})
    final = cli("dataset", "create", "--project", "p", "--name", "n").out.strip()
    cli("dataset", "add", "--files", str(kept))
    cli("dataset", "close")

    # A draft whose upload got as far as storage but never committed: its blobs are stored,
    # then the user discards the draft.
    dropped = write_tree(tmp_path / "dropped", {"c.txt": "only here", "b.txt": "shared"})
    draft = cli("dataset", "create", "--project", "p", "--name", "n").out.strip()
    cli("dataset", "add", "--files", str(dropped))
    blobs = open_storage(Settings.load())
    blobs.put_file(_sha(dropped / "c.txt"), dropped / "c.txt")
    _age(blobs, _sha(dropped / "c.txt"), hours=48)  # an upload abandoned long ago
    assert cli.json("dataset", "delete", draft)["id"] == draft
    assert "no dataset version" in cli("dataset", "show", draft, expect=2).err
    cli("dataset", "delete", final, expect=2)  # final versions stay

    dry = cli.json("storage", "gc", "--dry-run")
    assert dry["orphans"] == [_sha(dropped / "c.txt")] and not dry["deleted"]
    assert _sha(dropped / "c.txt") in set(blobs.iter_hashes())
    if backend.endswith("file"):
        partial = Settings.load().home / "storage/blobs/ab/.tmp-interrupted"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"half a blob")
        fresh = partial.with_name(".tmp-in-progress")
        fresh.write_bytes(b"being written")
        old = time.time() - 7 * 3600
        os.utime(partial, (old, old))
    report = cli.json("storage", "gc")
    assert report["orphans"] == [_sha(dropped / "c.txt")]
    assert _sha(dropped / "c.txt") not in set(blobs.iter_hashes())
    if backend.endswith("file"):
        assert report["partial_removed"] == 1 and not partial.exists() and fresh.exists()

    # Everything the final version needs is still there.
    path = Path(cli("dataset", "get", final).out.strip())
    assert (path / "a.txt").read_text() == "keep me" and (path / "b.txt").read_text() == "shared"
    assert cli.json("storage", "gc")["orphans"] == []


def _sha(path: Path) -> str:
    from orchestrator.storage import sha256_file

    return sha256_file(path)


TRAIN = """\
import os, pathlib, sys
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
print("training for the gc test")
(out / "models" / "classifier.txt").write_text("weights of the gc test")
(out / "report.html").write_text("<p>an artifact of the gc test</p>")
"""


def test_gc_keeps_what_runs_refer_to_and_honours_the_grace_period(
    cli: CLI, backend: str, git_repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run's model file, artifacts and output.log survive gc; so does a blob no row
    refers to yet but that is younger than the grace period (a finalize or a worker upload in
    flight); an old unreferenced blob goes."""
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    (git_repo.path / "train.py").write_text(TRAIN)
    (git_repo.path / "requirements.txt").write_text("# nothing to install\n")
    run_git(git_repo.path, "commit", "-qam", "train for gc")
    cli("task", "create", "--project", "gc", "--name", "training", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gc")
    run = cli("task", "run", "gc/training").out.strip()
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gc", "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    runtime = Runtime()
    Ingest(client, runtime.tasks, runtime.models, "test").step()
    runtime.close()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed", shown["error"]
    assert {a["path"] for a in shown["artifacts"]} == {"report.html", "output.log"}
    [model] = cli.json("model", "list", "--project", "gc")
    model_sha = model["uri"].rsplit("/", 1)[1]
    client.flushdb()  # the live log is gone: `retrain logs` must read the stored one

    blobs = open_storage(Settings.load())
    for sha in blobs.iter_hashes():  # everything the run left is old: only references keep it
        _age(blobs, sha, hours=48)
    old = _put(blobs, b"an abandoned upload")
    _age(blobs, old, hours=48)
    fresh = _put(blobs, b"an upload whose row is not committed yet")

    dry = cli("storage", "gc", "--dry-run")
    assert f"unreferenced blob {old}" in dry.out, dry.out
    assert fresh not in dry.out
    kept = cli.json("storage", "gc", "--dry-run")["kept"]
    assert kept["model"] == 1 and kept["artifact"] == 1 and kept["log"] == 1, kept
    assert blobs.exists(old)

    report = cli.json("storage", "gc")
    assert report["orphans"] == [old] and report["recent"] == [fresh], report
    assert not blobs.exists(old) and blobs.exists(fresh) and blobs.exists(model_sha)
    assert blobs.get_bytes(model_sha) == b"weights of the gc test"
    assert "training for the gc test" in cli("logs", run).out
    # With no grace, the fresh blob goes too; what rows refer to still stays.
    assert cli.json("storage", "gc", "--grace", "0")["orphans"] == [fresh]
    assert blobs.exists(model_sha) and "training for the gc test" in cli("logs", run).out
    blobs.close()
    client.close()


def test_storing_a_blob_again_restarts_its_grace_period(cli: CLI, backend: str) -> None:
    """A worker uploading a model whose bytes an old orphan already holds stores nothing new,
    yet its row only comes when the scheduler ingests the report: the old blob must then be
    as safe as a fresh upload, or gc could delete it in between."""
    blobs = open_storage(Settings.load())
    old = _put(blobs, b"bytes a failed run uploaded long ago")
    _age(blobs, old, hours=48)
    path = Path("model.bin")
    path.write_bytes(b"bytes a failed run uploaded long ago")
    blobs.put_file(old, path)  # a new run's upload of the same content
    report = cli.json("storage", "gc")
    assert report["recent"] == [old] and report["orphans"] == [], report
    assert blobs.exists(old)
    _age(blobs, old, hours=48)
    blobs.put_bytes(old, path.read_bytes())
    assert cli.json("storage", "gc")["recent"] == [old]
    blobs.close()


def test_gc_refuses_a_negative_grace(cli: CLI) -> None:
    result = cli("storage", "gc", "--grace", "-1", expect=2)
    assert "--grace" in result.err


def test_every_column_that_can_hold_a_blob_reference_is_classified() -> None:
    """A column added to the models that could name a blob (text long enough for a sha256, or
    JSON) must be listed in the registry gc reads, or declared to hold none, with a reason."""
    from sqlalchemy import JSON, String

    from orchestrator.store import blobrefs
    from orchestrator.store.models import Base

    registered = {ref.name for ref in blobrefs.BLOB_REFERENCES}
    declared = set(blobrefs.NOT_BLOB_REFERENCES)
    assert not registered & declared
    unclassified = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            name = f"{table.name}.{column.name}"
            kind = column.type
            could_hold = isinstance(kind, JSON) or (
                isinstance(kind, String) and (kind.length is None or kind.length >= 64)
            )
            if could_hold and name not in registered | declared:
                unclassified.append(name)
            registered.discard(name)
            declared.discard(name)
    assert not unclassified, f"classify in orchestrator/store/blobrefs.py: {unclassified}"
    assert not registered and not declared, f"no such columns: {registered | declared}"


def _put(blobs: BlobStore, data: bytes) -> str:
    sha = sha256_bytes(data)
    blobs.put_bytes(sha, data)
    return sha


def _age(blobs: BlobStore, sha: str, *, hours: float) -> None:
    """Make a stored blob look `hours` old: the file's mtime, or the S3 object's LastModified
    as the in-process S3 server (moto) keeps it."""
    when = time.time() - hours * 3600
    if isinstance(blobs, LocalBlobStore):
        path = blobs.path(sha)
        os.utime(path, (when, when))
        return
    assert isinstance(blobs, S3BlobStore)
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[blobs.bucket]
    bucket.keys[blobs.key(sha)].last_modified = dt.datetime.fromtimestamp(when, dt.timezone.utc)
