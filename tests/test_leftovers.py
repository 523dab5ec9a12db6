"""The suite's own guard (tests/conftest.py): a session that leaves a process running fails
and names it, orphans with parent pid 1 included; other sessions' processes are not its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from orchestrator.processes import alive
from tests.triggers.conftest import wait_for

ROOT = Path(__file__).parents[1]

LEAKY = """\
import subprocess, sys

def test_leaves_a_child_and_an_orphan():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # leaked child"],
                     start_new_session=True)
    # `sh` exits at once: its `sleep` is an orphan, re-parented to pid 1 (or a subreaper).
    subprocess.run(["sh", "-c", "sleep 601 >/dev/null 2>&1 &"], check=True)
"""

TIDY = """\
import subprocess

def test_waits_for_its_child():
    subprocess.run(["sleep", "0"], check=True)
"""


def inner_session(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own with the suite's conftest as a plugin."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"test_{name}.py").write_text(source)
    env = {**os.environ, "RETRAIN_TEST_LEFTOVER_GRACE_S": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(folder), "--basetemp", str(folder / "tmp"), str(folder)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_session_that_leaves_processes_behind_fails(tmp_path: Path) -> None:
    # Someone else's process (here: this outer test's) runs all along and is not flagged.
    other = subprocess.Popen(["sleep", "602"])
    try:
        done = inner_session(tmp_path, "leaky", LEAKY)
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert "left running (now killed): 2" in output, output
        assert "leaked child" in output and "sleep 601" in output, output
        assert "sleep 602" not in output, output
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    # The guard killed what it named: nothing of the inner session runs any more.
    for line in output.splitlines():
        if line.strip().startswith("pid "):
            pid = int(line.split()[1].rstrip(":"))
            wait_for(lambda pid=pid: not alive(pid), f"pid {pid} to end")  # type: ignore[misc]


def test_a_tidy_session_passes(tmp_path: Path) -> None:
    done = inner_session(tmp_path, "tidy", TIDY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left running" not in done.stdout
