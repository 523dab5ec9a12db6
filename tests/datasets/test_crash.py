"""Killing `retrain dataset close` mid-upload never leaves a final version with missing blobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.settings import Settings
from orchestrator.storage import open_storage
from orchestrator.store import Store
from orchestrator.store.events import read_events
from tests.conftest import CLI
from tests.datasets.conftest import write_tree

FILES = 3000


def stored_blobs(blobs_dir: Path) -> list[Path]:
    """Complete blobs (named by their hash), not the temporary files of a write under way."""
    if not blobs_dir.exists():
        return []
    return [p for p in blobs_dir.glob("*/*") if len(p.name) == 64]


def retrain_command() -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def test_kill_during_close_leaves_a_draft_that_closes_later(cli: CLI, tmp_path: Path) -> None:
    data = write_tree(tmp_path / "data", {f"part-{i:05d}.bin": f"{i}" * 512 for i in range(FILES)})
    draft = cli("dataset", "create", "--project", "p", "--name", "n").out.strip()
    cli("dataset", "add", "--files", str(data))
    blobs_dir = Settings.load().home / "storage" / "blobs"

    proc = subprocess.Popen(
        [*retrain_command(), "dataset", "close", "--id", draft],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Kill it as soon as uploads have begun: some blobs stored, the rest not yet.
    deadline = time.monotonic() + 60
    while not stored_blobs(blobs_dir):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "close never started uploading"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    uploaded = len(stored_blobs(blobs_dir))
    assert 0 < uploaded < FILES, f"the kill did not land mid-upload ({uploaded} blobs)"
    shown = cli.json("dataset", "show", draft)
    assert shown["version"]["status"] == "draft"
    assert shown["version"]["manifest_sha256"] is None
    store = Store(Settings.load().database_url)
    with store.reader() as session:
        assert [e.kind for e in read_events(session, 0)] == ["dataset.version.created"]
    store.dispose()

    # Closing again finishes the job, uploading only what is still missing.
    result = cli("dataset", "close", "--id", draft)
    assert f"uploaded {FILES - uploaded} new blob(s)" in result.err
    stored = set(open_storage(Settings.load()).iter_hashes())
    files = cli.json("dataset", "list", "--id", draft)["files"]
    assert {f["sha256"] for f in files} <= stored
    assert len(files) == FILES
