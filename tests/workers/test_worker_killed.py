"""A worker killed outright (kill -9 of the worker and its work horse, an OOM kill) takes its
job's process with it: a lost run's training must not go on holding a GPU whose lock died
with the worker, while the retry runs somewhere else."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.security.test_report_binding import alive, children
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

SLEEPER = """\
import os, pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
time.sleep(300)
"""



@pytest.mark.parametrize("killed", ["worker and work horse", "worker alone"])
def test_killing_a_worker_outright_ends_its_jobs_process(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path, killed: str
) -> None:
    """"worker alone" (new-user pass): `kill -9` of the worker's own pid, as a user or
    `retrain up` does it, left its work horse running, re-parented to init, and with it the
    job, holding its GPU until the task's timeout (24 h by default)."""
    (tmp_path / "marks").mkdir()
    pidfile = tmp_path / "marks" / "job.pid"  # the job may write there: --sandbox-write
    (git_repo.path / "train.py").write_text(SLEEPER)
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "sleeper")
    task = cli("task", "create", "--project", "p", "--name", "sleep", "--repo",
               str(git_repo.path), "--script", "train.py", "--queue", "gpu",
               "--args", str(pidfile)).out.strip()
    cli("task", "run", task)
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--sandbox-write", str(pidfile.parent)],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    job = 0
    try:
        deadline = time.monotonic() + 100
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        job = int(pidfile.read_text())
        victims = [*children(worker.pid), worker.pid] if killed != "worker alone" else []
        for pid in victims or [worker.pid]:  # the work horse, then the worker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive(job) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(job), "the job's process outlived its worker"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        if job and alive(job):
            os.killpg(job, signal.SIGKILL)


ESCAPER = """\
import os, pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
if os.fork() == 0:
    os.setsid()  # out of the job's group: only a reaper finds it
    if os.fork():
        os._exit(0)
    (marks / "daemon.tmp").write_text(str(os.getpid()))
    os.replace(marks / "daemon.tmp", marks / "daemon.pid")
    time.sleep(300)
    os._exit(0)
(marks / "horse.tmp").write_text(str(os.getppid()))
os.replace(marks / "horse.tmp", marks / "horse.pid")
time.sleep(300)
"""


def test_a_killed_work_horse_takes_its_jobs_escaped_processes_with_it(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path
) -> None:
    """The work horse killed outright (an OOM kill, RQ's kill after the job's timeout): the
    job's leader dies with it (parent-death signal), and what left the job's group is
    reparented to the worker slot, which kills it once the horse is gone."""
    marks = tmp_path / "marks"
    marks.mkdir()
    (git_repo.path / "train.py").write_text(ESCAPER)
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "escaper")
    task = cli("task", "create", "--project", "p", "--name", "escape", "--repo",
               str(git_repo.path), "--script", "train.py", "--queue", "gpu",
               "--args", str(marks)).out.strip()
    cli("task", "run", task)
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst", "--sandbox-write", str(marks)],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    daemon = 0
    try:
        deadline = time.monotonic() + 100
        while not ((marks / "horse.pid").exists() and (marks / "daemon.pid").exists()):
            assert time.monotonic() < deadline, "the job never started"
            assert worker.poll() is None, "the worker ended before the job started"
            time.sleep(0.1)
        daemon = int((marks / "daemon.pid").read_text())
        horse = int((marks / "horse.pid").read_text())
        assert horse in children(worker.pid)
        os.kill(horse, signal.SIGKILL)
        worker.wait(timeout=60)  # --burst: it ends once the job has failed
        assert not alive(daemon), "a process of the job outlived its work horse"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        if daemon and alive(daemon):
            os.kill(daemon, signal.SIGKILL)
