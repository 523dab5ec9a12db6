"""`task capture` lists the parameters a script's `retrain_run.connect` calls would record,
read from the code without running it."""

from __future__ import annotations

from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

SCRIPT = """\
import os
import retrain_run as run
from retrain_run import connect as hook
import config
from pkg import settings as data_settings

hyper = {"batch": 32, "shuffle": True, "seed": os.getpid()}
run.connect(config)
hook(hyper, name="Data")
run.connect(data_settings, "Loader")
open("/tmp/never-written-by-capture", "w")
"""


def test_capture_lists_the_defaults_connect_would_see(cli: CLI, git_repo: Repo) -> None:
    (git_repo.path / "config.py").write_text(
        "import math\nlr = 0.1\nepochs = 3\nlayers = [64, 32]\nwarmup = math.pi\n_hidden = 1\n")
    (git_repo.path / "pkg" / "settings.py").write_text("workers: int = 4\n")
    (git_repo.path / "train.py").write_text(SCRIPT)
    run_git(git_repo.path, "add", "-A")
    run_git(git_repo.path, "commit", "-qm", "connect a config")
    captured = cli.json("task", "capture", str(git_repo.path), "--project", "p", "--name",
                        "train", "--script", "train.py", "--param", "General/lr=0.5")
    assert isinstance(captured, dict)
    assert captured["parameters"] == {
        "General/lr": 0.5,  # --param wins over the code's default
        "General/epochs": 3,
        "General/layers": [64, 32],
        "Data/batch": 32,
        "Data/shuffle": True,  # Data/seed is computed: left out
        "Loader/workers": 4,
    }
