"""`retrain logs` treats its run's live stream as hostile: anyone with the worker's Redis ACL
can XADD to `retrain:logs:<task>`. A forged `end` entry does not end a follow the store says
goes on (nor choose its exit status), nothing from it reaches retrain's own lines with its
escape sequences."""

from __future__ import annotations

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
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "logs", run_id, "-f"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def _run(cli: CLI, git_repo: Repo) -> str:
    cli("task", "create", "--project", "hostile", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gpu")
    return cli("task", "run", "hostile/train").out.strip()


def test_a_forged_end_does_not_end_a_follow(cli: CLI, git_repo: Repo, machine_redis: str) -> None:
    run_id = _run(cli, git_repo)
    stream = keys.logs_stream(run_id)
    r = redis.Redis.from_url(machine_redis)
    try:
        r.xadd(stream, {"stream": "stdout", "line": "a line"})
        r.xadd(stream, {"stream": "end", "line": f"completed{ESC}"})
        follower = _follow(run_id)
        try:
            time.sleep(4)  # several of the follower's store checks
            assert follower.poll() is None, follower.communicate()
            r.xadd(stream, {"stream": "end", "line": "released"})  # it never ran
            time.sleep(3)
            assert follower.poll() is None, follower.communicate()
            assert cli.json("task", "abort", run_id)["status"] == "aborted"  # type: ignore[index]
            out, err = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                os.killpg(follower.pid, 9)
                follower.communicate()
        assert follower.returncode == 1, err
        assert "Traceback" not in err and "\x1b" not in err, err
        assert "ended: aborted" in err and "completed" not in err, err
        assert out.startswith("a line\n"), out
    finally:
        r.close()



PEAK = (
    "import re, sys\n"
    "from orchestrator.cli import main\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())\n"
    "    sys.stderr.write('peak ' + peak.group(1) + '\\n')\n"
)
"""The command's own peak (VmHWM, KiB): not ru_maxrss, which keeps the high-water mark of the
process image exec replaced, here pytest's, as large as the suite has grown (CI saw 289 MB)."""


def test_a_stream_of_many_entries_is_read_a_page_at_a_time(
    cli: CLI, git_repo: Repo, machine_redis: str
) -> None:
    run_id = _run(cli, git_repo)
    r = redis.Redis.from_url(machine_redis)
    count = 300_000
    try:
        for stream, fields in (
            (keys.logs_stream(run_id), {"stream": "stdout", "line": "x"}),
            (keys.metrics_stream(run_id), {"p": "{}"}),
        ):
            for _ in range(count // 10_000):
                with r.pipeline(transaction=False) as pipe:
                    for _ in range(10_000):
                        pipe.xadd(stream, fields)  # type: ignore[arg-type]
                    pipe.execute()
        for command in ("logs", "metrics"):
            shown = subprocess.run(
                [sys.executable, "-c", PEAK, command, run_id],
                env=os.environ.copy(), capture_output=True, text=True, timeout=120,
            )
            assert shown.returncode == 0, shown.stderr
            if command == "logs":
                assert shown.stdout == "x\n" * count
            peak_kib = int(shown.stderr.rsplit("peak ", 1)[1])
            assert peak_kib < 150_000, (command, peak_kib)  # all at once: 250 MB and more
    finally:
        r.close()
