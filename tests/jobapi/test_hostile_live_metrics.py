"""`retrain metrics` treats its run's live stream as hostile: anyone with the worker's Redis
ACL can XADD to `retrain:metrics:<task>`. Entries of the wrong shape or nested too deeply are
skipped, a forged `end` does not end a run the store says is queued, and nothing read from
Redis reaches the terminal with its escape sequences."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import redis

from orchestrator.queue import keys
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo

git_repo = task_fixtures.git_repo

ESC = "\x1b]0;owned\x07\x1b[2J"


def _follow(run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()",
         "metrics", run_id, "-f"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def test_forged_live_entries_are_skipped_and_a_forged_end_does_not_end_the_run(
    cli: CLI, git_repo: Repo, machine_redis: str
) -> None:
    cli("task", "create", "--project", "hostile", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gpu")
    run_id = cli("task", "run", "hostile/train").out.strip()
    stream = keys.metrics_stream(run_id)
    r = redis.Redis.from_url(machine_redis)
    try:
        r.xadd(stream, {"p": json.dumps({"loss": [1, 2]})})  # wrong shape
        r.xadd(stream, {"p": "[" * 100_000})  # nested past the recursion limit
        r.xadd(stream, {"p": json.dumps({"loss": [[0, 1], [0.5, 0.25]]})})  # a good one
        r.xadd(stream, {"p": json.dumps({f"acc{ESC}": [[0], [1.0]]})})
        shown = cli.json("metrics", run_id)
        assert isinstance(shown, dict)
        assert shown["series"]["loss"]["count"] == 2
        table = cli("metrics", run_id)
        assert "\x1b" not in table.out + table.err

        r.xadd(stream, {"end": f"completed{ESC}"})
        follower = _follow(run_id)
        try:
            time.sleep(4)  # several of the follower's store checks
            assert follower.poll() is None, follower.communicate()
            assert cli.json("task", "abort", run_id)["status"] == "aborted"  # type: ignore[index]
            out, err = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                os.killpg(follower.pid, 9)
                follower.communicate()
        assert follower.returncode == 1, err
        assert "Traceback" not in err and "\x1b" not in out + err, err
        assert "ended: aborted" in err and "completed" not in err, err
    finally:
        r.close()


def test_a_number_too_large_for_a_float_is_skipped(
    cli: CLI, git_repo: Repo, machine_redis: str
) -> None:
    """JSON has integers of any size: a step or value of 10**400 in a live entry made
    `retrain metrics` (and a follower) die with OverflowError from math.isfinite (attacker
    pass 3). It is skipped like any other point that is not a finite number."""
    cli("task", "create", "--project", "hostile", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gpu")
    run_id = cli("task", "run", "hostile/train").out.strip()
    stream = keys.metrics_stream(run_id)
    huge = "1" + "0" * 400
    r = redis.Redis.from_url(machine_redis)
    try:
        r.xadd(stream, {"p": f'{{"loss": [[{huge}, 1], [0.5, 0.25]]}}'})
        r.xadd(stream, {"p": f'{{"acc": [[0], [{huge}]]}}'})
    finally:
        r.close()
    shown = cli.json("metrics", run_id)
    assert isinstance(shown, dict)
    assert shown["series"]["loss"]["count"] == 1 and "acc" not in shown["series"], shown
    assert "loss" in cli("metrics", run_id).out
