"""The home's `worker.secret` as `ensure_worker_secret` makes it: one secret however many
processes make it at once, owner-only, and never written through a link planted beside it."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

from orchestrator.settings import ensure_worker_secret


def _make(home: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        results.put(ensure_worker_secret(Path(home)))
    except Exception as exc:
        results.put(f"error: {exc!r}")


def test_concurrent_commands_make_one_secret(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(40):
        home = tmp_path / f"home{round_}"
        results = context.Queue()
        procs = [context.Process(target=_make, args=(str(home), results)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        values = [results.get() for _ in procs]
        final = (home / "worker.secret").read_text().strip()
        assert values == [final] * 4, (round_, values)


def test_a_planted_link_beside_the_secret_is_not_followed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    victim.chmod(0o644)
    (home / "worker.tmp").symlink_to(victim)
    secret = ensure_worker_secret(home)
    assert victim.read_text() == "keep me\n"
    path = home / "worker.secret"
    assert not path.is_symlink()
    assert path.read_text().strip() == secret


def test_a_planted_readable_file_does_not_make_the_secret_readable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    planted = home / "worker.tmp"
    planted.write_text("")
    planted.chmod(0o644)
    ensure_worker_secret(home)
    mode = stat.S_IMODE(os.lstat(home / "worker.secret").st_mode)
    assert mode == 0o600, oct(mode)
