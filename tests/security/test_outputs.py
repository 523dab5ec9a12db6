"""Promise 7: a job's output folder is uploaded without following links out of it.

A job (user code from any repository) leaves symlinks in its output folder pointing at the
worker host's files; none of them may be uploaded as an artifact or registered as a model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

LINKS = """\
import os, pathlib
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "models").mkdir(exist_ok=True)
(out / "real.txt").write_text("mine")
os.symlink("real.txt", out / "alias.txt")                 # stays inside: fine
os.symlink(SECRET, out / "leak.txt")                      # a host file
os.symlink(SECRET, out / "models" / "stolen.pkl")         # a host file as a model
os.symlink(os.path.dirname(SECRET), out / "hostdir")      # a host folder
os.symlink(SECRET, out / "metrics.json")                  # metrics read from the host
"""



def test_links_out_of_the_output_folder_are_not_uploaded(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path
) -> None:
    secret = tmp_path / "host" / "shadow"
    secret.parent.mkdir()
    secret.write_text('{"accuracy": 1.0}')
    (git_repo.path / "train.py").write_text(LINKS.replace("SECRET", repr(str(secret))))
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "links")
    task = cli("task", "create", "--project", "p", "--name", "links", "--repo",
               str(git_repo.path), "--script", "train.py", "--queue", "gpu").out.strip()
    run = cli("task", "run", task).out.strip()
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    Scheduler(Runtime(), triggers, wakeup=False).ingest.step()

    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed", shown["error"]
    paths = sorted(a["path"] for a in shown["artifacts"])
    assert paths == ["alias.txt", "output.log", "real.txt"], paths
    assert shown["metrics"] == {}, shown["metrics"]
    assert cli.json("model", "list", "--project", "p") == []
