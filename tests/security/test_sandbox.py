"""The job sandbox: a job's code cannot reach its worker or the jobs after it.

A real worker (started with a cloud key and the worker secret in its environment, as an
operator would) runs a real job script that tries, as an attacker's training script would:
to read `/proc/<pid>/environ` and `/proc/<pid>/mem` of every ancestor, to read the worker's
`worker.secret`, to write into the environment cache and a git mirror (poisoning later jobs),
to read another attempt's work folder, and to signal the worker. Each must be refused; what
the job is for (reading its checkout and inputs, writing its outputs and a temporary file)
must still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from orchestrator.git import Mirror
from orchestrator.queue import keys
from orchestrator.settings import ensure_worker_secret
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git
from workers import sandbox

git_repo = task_fixtures.git_repo

ATTACK = r"""
import json, os, pathlib, signal, sys, tempfile

targets = json.loads(os.environ["TARGETS"])
result = {}

def attempt(name, action):
    try:
        value = action()
        result[name] = value if isinstance(value, str) else "done"
    except Exception as exc:
        # A write the host's read-only view refuses (a root job's, issue 10) before Landlock.
        result[name] = "EROFS" if getattr(exc, "errno", 0) == 30 else type(exc).__name__

def ancestors():
    pid, found = os.getpid(), []
    while pid > 1:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid > 1:
            found.append(pid)
    return found

for pid in ancestors():
    attempt(f"environ {pid}", lambda: "read " + str("hunter2" in pathlib.Path(
        f"/proc/{pid}/environ").read_text(errors="replace")))
    attempt(f"mem {pid}", lambda: open(f"/proc/{pid}/mem", "rb").close())
    attempt(f"signal {pid}", lambda: os.kill(pid, 0))
attempt("secret", lambda: "read " + pathlib.Path(targets["secret"]).read_text()[:4])
attempt("other attempt", lambda: "read " + pathlib.Path(targets["other"]).read_text())
attempt("env cache", lambda: pathlib.Path(os.environ["VIRTUAL_ENV"], "poison.pth").write_text(
    "import os\n"))
attempt("env cache site", lambda: pathlib.Path(sys.prefix, "bin", "poison").write_text("x"))
attempt("git mirror", lambda: pathlib.Path(targets["mirror"], "hooks", "poison").write_text("x"))
attempt("checkout write", lambda: pathlib.Path("train.py").write_text("poisoned"))
# What a job is for must still work.
attempt("checkout read", lambda: "read " + str(len(pathlib.Path("train.py").read_text()) > 0))
attempt("output", lambda: pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"], "x.txt").write_text("x"))
attempt("tmp", lambda: tempfile.NamedTemporaryFile().close())
result["nnp"] = [l for l in open("/proc/self/status") if "NoNewPrivs" in l][0].split()[1]
print("RESULT " + json.dumps(result))
"""


def run_attack(cli: CLI, repo: Repo, url: str, home: Path, *worker_args: str) -> dict[str, str]:
    secret = ensure_worker_secret(home)
    (repo.path / "train.py").write_text(ATTACK)
    (repo.path / "requirements.txt").write_text("")
    run_git(repo.path, "commit", "-qam", "an attacker's training script")
    cache = home / "cache"
    other = cache / "work" / ("0" * 32 + ".0")
    other.mkdir(parents=True)
    (other / "data.txt").write_text("another run's data")
    mirror = Mirror(cache / "git").path(str(repo.path))  # made by the job's checkout
    targets = {"secret": str(home / "worker.secret"), "other": str(other / "data.txt"),
               "mirror": str(mirror)}
    task = cli("task", "create", "--project", "p", "--name", "attack", "--repo", str(repo.path),
               "--script", "train.py", "--queue", "gpu", "--env",
               "TARGETS=" + json.dumps(targets)).out.strip()
    run = cli("task", "run", task).out.strip()
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst", *worker_args],
        env={**os.environ, "AWS_SECRET_ACCESS_KEY": "hunter2", "RETRAIN_WORKER_SECRET": secret},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = worker.communicate(timeout=110)
    assert worker.returncode == 0, err
    client = redis.Redis.from_url(url)
    lines = [e[1][b"line"].decode() for e in client.xrange(keys.logs_stream(run))]
    client.close()
    found = [line for line in lines if line.startswith("RESULT ")]
    assert found, lines
    result = dict(json.loads(found[-1][len("RESULT "):]))
    result["worker pid"] = str(worker.pid)
    assert not (mirror / "hooks" / "poison").exists(), result
    return result


@pytest.mark.skipif(sandbox.landlock_abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")
def test_a_job_cannot_reach_its_worker_or_poison_the_caches(
    cli: CLI, git_repo: Repo, machine_redis: str, retrain_home: Path
) -> None:
    result = run_attack(cli, git_repo, machine_redis, retrain_home)
    # The job's ancestors up to the worker the test started (the work horse, the worker;
    # what started the worker is not the worker's to protect).
    chain = [name.split()[1] for name in result if name.startswith("environ ")]
    assert result["worker pid"] in chain, result
    ours = chain[: chain.index(result["worker pid"]) + 1]
    ancestors = [f"{what} {pid}" for pid in ours for what in ("environ", "mem", "signal")]
    reached = {name: result[name] for name in ancestors if result[name] != "PermissionError"}
    assert not reached, result
    for name in ("secret", "other attempt"):
        assert result[name] == "PermissionError", (name, json.dumps(result))
    for name in ("env cache", "env cache site", "git mirror", "checkout write"):
        assert result[name] in ("PermissionError", "EROFS"), (name, json.dumps(result))
    assert result["checkout read"] == "read True", result
    assert result["output"] == "done" and result["tmp"] == "done", result
