"""`task create --resolve` pins a loose requirements file with uv's resolver on the user's
machine: reading a package's metadata must never build it (which runs its build code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo
from tests.workers import buildcode

git_repo = task_fixtures.git_repo


def test_resolving_never_builds_a_package(
    cli: CLI, git_repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = buildcode.evil_package(
        tmp_path / "evilpkg", tmp_path / "built-marker", tmp_path / "secret"
    )
    sdist = buildcode.evil_sdist(source, tmp_path / "sdists")  # metadata only by building it
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_FIND_LINKS", str(sdist.parent))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    loose = tmp_path / "loose.txt"
    loose.write_text("evilpkg\n")
    result = cli(
        "task",
        "create",
        "--project",
        "p",
        "--name",
        "t",
        "--repo",
        str(git_repo.path),
        "--script",
        "train.py",
        "--queue",
        "q",
        "--requirements",
        str(loose),
        "--resolve",
        expect=2,
    )
    assert "--resolve" in result.err and "evilpkg" in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "built-marker").exists(), "the package's build code ran"


def test_resolving_a_loose_file_of_wheels_pins_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.tasks.requirements import resolve
    from tests.workers.test_envs import _write_wheel

    (tmp_path / "wheels").mkdir()
    _write_wheel(tmp_path / "wheels")
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    loose = tmp_path / "loose.txt"
    loose.write_text("tinypkg\n")
    assert resolve(loose) == ["tinypkg==0.1.0"]
