"""The lifeline on its own (orchestrator/lifeline.py), with real processes: a child runs its
stages, in order, once, when its parent dies however it dies, and not before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


# A worker idle in RQ's BLPOP: the main thread blocks in a socket read that nothing will
# answer, and only a signal handled *in that thread* interrupts it (RQ's SIGTERM handler
# raises there). Seen in `retrain up`: the parent-death signal and the stage's SIGTERM arrive
# together, the kernel hands the SIGTERM to another thread, and the worker stays in its read
# until BLPOP's timeout (75 s) — or here, forever.
BLOCKED = """\
import pathlib, signal, socket, sys
from orchestrator import lifeline
def term(_signum, _frame):
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
lifeline.hold(lifeline.WORKER)
ours, theirs = socket.socketpair()
pathlib.Path(sys.argv[1]).write_text("ready")
ours.recv(1)
"""

MANY = """\
import os, subprocess, sys, time
from orchestrator import lifeline
read, write = lifeline.make()
for ready in sys.argv[2:]:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], ready], start_new_session=True,
                             pass_fds=(read,), env=lifeline.child_env(read))
    print(child.pid, flush=True)
os.close(read)
time.sleep(600)
"""


def test_children_blocked_in_a_read_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    """Twelve idle 'workers' at once, so that the race between the two notices is met: each
    must leave its blocking read at the first stage, not at the second (120 s later)."""
    readies = [tmp_path / f"ready.{n}" for n in range(12)]
    parent = subprocess.Popen([sys.executable, "-c", MANY, BLOCKED, *map(str, readies)],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    children = [int(parent.stdout.readline()) for _ in readies]
    try:
        wait_for(lambda: all(r.exists() for r in readies), "the children to block", 120)
        parent.kill()
        parent.wait(60)
        parent.stdout.close()
        # Far below the second stage (ORPHAN_JOB_S, 120 s): only the first can have ended them.
        wait_for(lambda: not [c for c in children if alive(c)],
                 "every blocked child to stop at the first stage", 60,
                 describe=lambda: [c for c in children if alive(c)])
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# A first stage that did not stop the child (in `retrain up`'s tests, about one kill in
# fifteen left an idle worker in its read until the second stage, its SIGTERM handled and
# the stop lost): the child ignores its first SIGTERM, records each, and ends on the next.
# `idle` is what the worker says of itself (no job running); `again` shortens the wait.
UNSTOPPED = """\
import pathlib, signal, sys, time
from orchestrator import lifeline
record = pathlib.Path(sys.argv[1])
idle = record.with_suffix(".state").read_text() == "idle"
def term(_signum, _frame):
    with record.open("a") as out:
        out.write("SIGTERM\\n")
    if record.read_text().count("SIGTERM") == 2:
        sys.exit(0)
signal.signal(signal.SIGTERM, term)
lifeline.AGAIN_S = 0.5
lifeline.hold(lifeline.WORKER)
lifeline.when_idle(lambda: idle)
record.with_suffix(".ready").write_text("ready")
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_an_idle_child_that_outlived_the_first_stage_is_told_again(
    tmp_path: Path, state: str
) -> None:
    """Idle, it gets the first stage's signal again until it ends; busy (a job that must
    finish), it is left alone until the second stage."""
    record = tmp_path / "record.txt"
    record.with_suffix(".state").write_text(state)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, UNSTOPPED, str(record)],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        wait_for(lambda: record.with_suffix(".ready").exists(), "the child to hold its line")
        parent.kill()
        parent.wait(60)
        parent.stdout.close()
        wait_for(lambda: record.exists(), "the first stage")
        if state == "idle":
            wait_for(lambda: not alive(child), "the idle child to be told again and end", 60)
            assert record.read_text() == "SIGTERM\nSIGTERM\n"
        else:
            time.sleep(3)  # six times AGAIN_S: no second SIGTERM while a job runs
            assert alive(child) and record.read_text() == "SIGTERM\n"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
