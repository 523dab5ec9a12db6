"""Promise 2 of the trust boundary: a job gets none of its worker's credentials.

A real worker process, started with cloud credentials and the Redis URL in its environment,
runs a job from a repository that prints its own environment. The job's environment is an
allow-list: the task's `env`, retrain's job variables, PATH/HOME/locale and the like, and
what the operator names with `retrain worker --pass-env`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from orchestrator.queue import keys
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

DUMP = """\
import json, os
print("ENV " + json.dumps(dict(os.environ)))
# A library's cache or settings below the home folder (huggingface, torch, matplotlib).
state = os.path.expanduser("~/.cache/somelib/state")
try:
    os.makedirs(os.path.dirname(state), exist_ok=True)
    with open(state, "w") as f:
        f.write("x")
    print("HOME wrote", state)
except OSError as exc:
    print("HOME refused", state, exc)
"""



def job_environment(cli: CLI, repo: Repo, url: str, *worker_args: str,
                    task_env: tuple[str, ...] = ()) -> dict[str, str]:
    (repo.path / "train.py").write_text(DUMP)
    run_git(repo.path, "commit", "-qam", "dump the environment")
    (repo.path / "requirements.txt").write_text("")
    run_git(repo.path, "commit", "-qam", "no requirements")
    env_args = [a for pair in task_env for a in ("--env", pair)]
    task = cli("task", "create", "--project", "p", "--name", "dump", "--repo", str(repo.path),
               "--script", "train.py", "--queue", "gpu", *env_args).out.strip()
    run = cli("task", "run", task).out.strip()
    worker_env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "hunter2", "AWS_PROFILE": "ml",
                  "RETRAIN_DATABASE_URL": "postgresql://u:pw@db/x", "HTTP_PROXY":
                  "http://proxy:3128", "HTTPS_PROXY": "http://user:pw@proxy:3128",
                  "LANG": "C.UTF-8"}
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst", *worker_args],
        env=worker_env, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    client = redis.Redis.from_url(url)
    lines = [e[1][b"line"].decode() for e in client.xrange(keys.logs_stream(run))]
    client.close()
    dumped = [line for line in lines if line.startswith("ENV ")]
    assert dumped, lines
    env = dict(json.loads(dumped[0][4:]))
    env["home said"] = next(line for line in lines if line.startswith("HOME "))
    return env


def test_a_job_gets_an_allow_list_not_the_workers_environment(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path
) -> None:
    env = job_environment(cli, git_repo, machine_redis, task_env=("MODE=fast",))
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "RETRAIN_REDIS_URL",
                 "RETRAIN_DATABASE_URL", "RETRAIN_HOME", "HTTPS_PROXY"):
        assert name not in env, (name, sorted(env))
    assert "hunter2" not in json.dumps(env) and machine_redis not in json.dumps(env)
    assert env["MODE"] == "fast" and env["LANG"] == "C.UTF-8"
    assert env["HTTP_PROXY"] == "http://proxy:3128"  # no credentials in it: it passes
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["RETRAIN_TASK_ID"]
    assert env["PATH"].split(os.pathsep)[0].endswith("/bin") and "HOME" in env


def test_the_operator_names_what_else_passes(
    cli: CLI, git_repo: Repo, machine_redis: str
) -> None:
    env = job_environment(cli, git_repo, machine_redis, "--pass-env", "AWS_PROFILE")
    assert env["AWS_PROFILE"] == "ml"
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_a_sandboxed_job_has_a_home_of_its_own_it_may_write(
    cli: CLI, git_repo: Repo, machine_redis: str, retrain_home: Path
) -> None:
    """New-user pass on issue 10: a sandboxed job got its worker's HOME, which it may not
    write (nor read, where it holds credentials), so a library that keeps a cache or its
    settings below ~ failed the run. Its HOME is now a folder of its own execution's."""
    env = job_environment(cli, git_repo, machine_redis)
    home = env["HOME"]
    assert home != os.environ.get("HOME") and home.startswith(str(retrain_home)), home
    assert env["home said"] == f"HOME wrote {home}/.cache/somelib/state", env["home said"]
