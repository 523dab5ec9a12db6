"""A worker running as root runs its jobs as root only when told (`--allow-root`): such a job,
confined and with no capabilities, still owns root's files (Landlock does not govern chmod: a
setuid-root binary for any local user) and passes the owner checks of root's sockets. Found
by the attacker pass on issue 10. And a `--job-user` that cannot reach what its jobs read is
refused at the worker's start, not discovered job by job."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import CLI
from workers import sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker runs root jobs")


def test_a_root_worker_without_a_job_user_refuses_to_start(
    cli: CLI, retrain_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETRAIN_ALLOW_ROOT")
    result = cli("worker", "--queue", "gpu", "--gpus", "none", "--burst", expect=2)
    assert "jobs would run as root" in result.err and "--job-user USER" in result.err
    assert "--allow-root" in result.err and "Traceback" not in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert not (retrain_home / "redis.json").exists()  # nothing started, nothing registered
    # Told, it starts (and says its jobs run as root).
    told = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker", "--queue",
         "gpu", "--gpus", "none", "--burst", "--allow-root"],
        capture_output=True, text=True, timeout=300, check=False)
    assert told.returncode == 0 and "jobs run as root" in told.stderr, told.stderr


def test_up_as_root_refuses_before_it_starts_anything(
    cli: CLI, retrain_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RETRAIN_ALLOW_ROOT")
    (tmp_path / "triggers.yaml").write_text("triggers: []\n")
    result = cli("up", "--gpus", "none", expect=2)
    assert "RETRAIN_JOB_USER=USER" in result.err and "--allow-root" in result.err, result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not (retrain_home / "redis.json").exists() and not (retrain_home / "up.json").exists()


def test_a_job_user_that_cannot_reach_the_cache_is_refused_at_start(
    cli: CLI, retrain_home: Path, tmp_path: Path
) -> None:
    # pytest's own folders are root's, 0700: a home there is out of the job user's reach.
    result = cli("worker", "--queue", "gpu", "--gpus", "none", "--burst", "--job-user",
                 "nobody", expect=2)
    assert "--job-user nobody: cannot enter" in result.err and "(mode 700)" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not (retrain_home / "redis.json").exists()


def test_reach_as_answers_with_the_kernels_checks() -> None:
    nobody = pwd.getpwnam("nobody")
    open_ = Path(tempfile.mkdtemp(prefix="retrain-reach-"))
    try:
        open_.chmod(0o755)
        closed = open_ / "closed"
        (closed / "inside").mkdir(parents=True)
        closed.chmod(0o700)
        secret = open_ / "secret"
        secret.write_text("x")
        secret.chmod(0o600)
        assert sandbox.reach_as(nobody, [open_, open_ / "not-yet" / "made"]) is None
        said = sandbox.reach_as(nobody, [open_, closed / "inside"])
        assert said == f"cannot enter {closed} (mode 700) to reach {closed / 'inside'}", said
        assert sandbox.reach_as(nobody, [secret]) == f"cannot read {secret}"
    finally:
        shutil.rmtree(open_)


def test_up_checks_its_workers_job_user_before_it_starts_anything(
    cli: CLI, retrain_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """New-user pass: `RETRAIN_JOB_USER=nobody retrain up` said "retrain is up", started the
    scheduler, then its worker refused (naming --job-user, an option up does not have) and
    up stopped everything with exit 1."""
    monkeypatch.delenv("RETRAIN_ALLOW_ROOT")
    monkeypatch.setenv("RETRAIN_JOB_USER", "nobody")
    (tmp_path / "triggers.yaml").write_text("triggers: []\n")
    result = cli("up", "--gpus", "none", expect=2)
    assert result.err.startswith("retrain: error: RETRAIN_JOB_USER=nobody: cannot enter")
    assert "(mode 700)" in result.err and len(result.err.strip().splitlines()) == 1
    assert not (retrain_home / "redis.json").exists() and not (retrain_home / "up.json").exists()
