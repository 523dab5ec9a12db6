"""A job that replaces its job-API channel before it exits (with a FIFO, or a link to an
endless device) must not hang its worker: found by the attacker pass on issue 14, where the
work horse blocked forever on the FIFO, or spun on /dev/zero, and never reported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

TRAIN = """\
import os, sys
import retrain_run as run
run.log_metric("loss", 0.5, step=1)
channel = os.environ["RETRAIN_RUN_CHANNEL"]
os.unlink(channel)
if sys.argv[1] == "fifo":
    os.mkfifo(channel)
else:
    os.symlink("/dev/zero", channel)
print("channel replaced by", sys.argv[1])
"""


@pytest.mark.parametrize("replacement", ["fifo", "zero"])
def test_a_replaced_channel_neither_hangs_nor_spins_the_worker(
    cli: CLI, git_repo: Repo, machine_redis: str, replacement: str
) -> None:
    (git_repo.path / "train.py").write_text(TRAIN)
    run_git(git_repo.path, "add", "-A")
    run_git(git_repo.path, "commit", "-qm", "a job that replaces its channel")
    cli("task", "create", "--project", "jobapi", "--name", "swap", "--repo",
        str(git_repo.path), "--script", "train.py", "--args", replacement, "--queue", "gpu")
    run_id = cli("task", "run", "jobapi/swap").out.strip()
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()",
         "worker", "--queue", "gpu", "--gpus", "none", "--burst"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        # A burst worker exits once its one job reported; before the fix it never did.
        assert worker.wait(240) == 0
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, 9)
            worker.wait()
    log = cli("logs", run_id).out
    assert f"channel replaced by {replacement}" in log
