"""The lifeline on its own (orchestrator/lifeline.py), with real processes: a child runs its
stages, in order, once, when its parent dies however it dies, and not before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.processes import alive
from tests.triggers.conftest import wait_for

# The child records each SIGTERM; the second ends it, as a worker's second Ctrl-C would.
CHILD = """\
import pathlib, signal, sys, time
from orchestrator import lifeline
record = pathlib.Path(sys.argv[1])
def term(_signum, _frame):
    with record.open("a") as out:
        out.write("SIGTERM\\n")
    if record.read_text().count("SIGTERM") == 2:
        sys.exit(0)
signal.signal(signal.SIGTERM, term)
held = lifeline.hold(((0.0, signal.SIGTERM), (1.0, signal.SIGTERM)))
record.with_suffix(".ready").write_text(str(held))
while True:
    time.sleep(0.05)
"""

# The parent: a lifeline to one child, then wait to be killed. With a third argument, a
# second process holds the write end too, so that only the parent-death signal can tell.
PARENT = """\
import os, subprocess, sys, time
from orchestrator import lifeline
read, write = lifeline.make()
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                         start_new_session=True, pass_fds=(read,), env=lifeline.child_env(read))
if len(sys.argv) > 3:
    holder = subprocess.Popen(["sleep", "60"], pass_fds=(write,))
    print(holder.pid, flush=True)
os.close(read)
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(("death", "notice"), [
    (signal.SIGKILL, "pipe"), (signal.SIGTERM, "pipe"),
    pytest.param(signal.SIGKILL, "pdeathsig", marks=pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")),
])
def test_a_child_runs_its_stages_once_its_parent_is_gone(
    tmp_path: Path, death: signal.Signals, notice: str
) -> None:
    record = tmp_path / "record.txt"
    holder = 0
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(record), *(["hold"] if notice != "pipe" else [])],
        stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    if notice != "pipe":
        holder = int(parent.stdout.readline())
    child = int(parent.stdout.readline())
    try:
        wait_for(lambda: record.with_suffix(".ready").exists(), "the child to hold its line")
        assert record.with_suffix(".ready").read_text() == "True"
        assert not record.exists() and alive(child)  # nothing happens while the parent lives
        parent.send_signal(death)
        parent.wait(60)
        parent.stdout.close()
        wait_for(lambda: not alive(child), "the child to run both stages and exit", 60)
        assert record.read_text() == "SIGTERM\nSIGTERM\n"  # each stage once, in order
        if holder:
            assert alive(holder)  # the pipe was still open: the kernel's signal told it
    finally:
        for pid in (child, holder):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_without_a_line_nothing_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import lifeline

    monkeypatch.delenv(lifeline.ENV, raising=False)
    assert lifeline.hold(lifeline.WORKER) is False
    monkeypatch.setenv(lifeline.ENV, "not-a-number")  # a stale variable: ignored, and removed
    assert lifeline.hold(lifeline.WORKER) is False
    assert lifeline.ENV not in os.environ
