"""`storage gc` frees exactly what no version refers to, and nothing a version needs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator.settings import Settings
from orchestrator.storage import open_storage
from tests.conftest import CLI
from tests.datasets.conftest import write_tree


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
