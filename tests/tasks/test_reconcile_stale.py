"""Reconcile and a job that ended without its reports reaching the store.

A real worker runs a queued run to the end; its reports are then erased from the stream
before the scheduler read them (a Redis restart without persistence, a trim). The store
still says `queued` and RQ holds a finished job: reconcile must not count that job as the
run's, or the run stays queued forever. While the reports may still be read (the stream
holds them), and for a grace period after the job ended, it waits instead of running the
task twice.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from orchestrator.queue import keys
from orchestrator.runtime import Runtime
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo


def test_a_finished_job_whose_reports_were_erased_is_enqueued_again(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "no requirements")
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo",
                   str(git_repo.path), "--script", "train.py", "--queue", "gpu").out.strip()
    run = cli("task", "run", template).out.strip()
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    job = runtime.tasks.queues.job(run)
    assert job is not None and job.get_status() == "finished"
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)

    # The reports are still in the stream, unread: the scheduler will apply them.
    assert runtime.tasks.reconcile(now=later).enqueued == []
    runtime.redis.delete(keys.REPORTS_STREAM)  # erased before anyone read them
    assert cli.json("task", "show", run)["status"] == "queued"
    # Just ended: within the grace period nothing is decided.
    assert runtime.tasks.reconcile().enqueued == []
    # Past it, the finished job is not the run's: the run is enqueued again, once.
    assert runtime.tasks.reconcile(now=later).enqueued == [run]
    assert runtime.tasks.reconcile(now=later).enqueued == []
    job = runtime.tasks.queues.job(run)
    assert job is not None and job.get_status() == "queued"


def test_a_job_a_worker_refused_is_enqueued_again(
    cli: CLI, git_repo: Repo, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New-user pass on issue 15: a worker refused a queued run's job (its payload was signed
    with another secret, or not at all, as runs queued before the first `retrain up` were);
    RQ kept the failed job, and reconcile counted it as the run's, so the run stayed queued
    for good and `queue reconcile` said "enqueued 0". A failed job of a run still queued ran
    nothing of it: past the grace period it is replaced, signed by the scheduler."""
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "no requirements")
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo",
                   str(git_repo.path), "--script", "train.py", "--queue", "gpu").out.strip()
    monkeypatch.setenv("RETRAIN_WORKER_SECRET", "the-secret-the-cli-had-at-the-time")
    run = cli("task", "run", template).out.strip()
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env={**os.environ, "RETRAIN_WORKER_SECRET": "the-secret-the-workers-hold-now"},
        capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    job = runtime.tasks.queues.job(run)
    assert job is not None and job.get_status() == "failed"
    assert cli.json("task", "show", run)["status"] == "queued"
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    assert runtime.tasks.reconcile().enqueued == []  # within the grace period
    assert runtime.tasks.reconcile(now=later).enqueued == [run]
    assert runtime.tasks.reconcile(now=later).enqueued == []
    job = runtime.tasks.queues.job(run)
    assert job is not None and job.get_status() == "queued"
