"""What stays of a `retrain up` that died: found through `up.json`, and stopped.

Two parties use it:

- `up`'s *guard*, a small process `up` starts first (`python -m orchestrator.reaper`), in a
  session of its own, holding the lifeline (see `orchestrator.lifeline`). When `up` ends in
  order it says "done" on the line and the guard exits. When `up` dies instead, the guard
  gives the children time to stop by themselves (their own lifelines: a worker finishes its
  job), kills what is left of them, then stops the embedded Redis if `up` had started it: last,
  so the workers' final reports reach it. It removes `up.json` when nothing is left.
- the next `retrain up` of the same home, which finds what a dead `up` left running (its
  guard too was killed, or its children hang) and stops it before starting its own.

Processes are recorded in `up.json` with their start times, so a pid the system has since
given to another process is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.lifeline import ORPHAN_JOB_S, SCHEDULER_STOP_S, take, wait_closed
from orchestrator.processes import same

STATE_FILE = "up.json"
DONE = b"done"
"""What `up` writes on the lifeline when it has stopped everything itself."""

GUARD_PATIENCE_S = ORPHAN_JOB_S + 60.0
"""How long the guard lets the children of a dead `up` stop by themselves: a running job's
bound, then its grace period to stop (30 s by default) and some margin."""

ORPHAN_STOP_S = 45.0
"""How long the next `up` lets a dead `up`'s worker hand its job back before killing it."""


@dataclass(frozen=True)
class Recorded:
    """A process as `up.json` records it."""

    role: str
    pid: int
    start: int | None

    def running(self) -> bool:
        """Alive, and provably the process `up.json` recorded: with no start time (or pid 1,
        or this process) the pid may belong to anyone by now, so it counts as gone."""
        if self.start is None or self.pid <= 1 or self.pid == os.getpid():
            return False
        return same(self.pid, self.start)

    def signal(self, signum: int) -> None:
        """`signum` to the process. SIGKILL and SIGCONT go to its whole group: a child of
        `up` leads a session of its own, whose group holds its work horse and, for a
        supervised worker, its slots. SIGTERM goes to the process alone, which decides what
        its group does (a work horse dies at once on a SIGTERM of its own)."""
        if not self.running():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            whole = signum in (signal.SIGKILL, signal.SIGCONT) and self.role != "redis"
            if whole and os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)

    def __str__(self) -> str:
        return f"{self.role} pid {self.pid}"


def read_state(home: Path) -> dict[str, object] | None:
    """`up.json` of this home, or None when there is none (or it is unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((home / STATE_FILE).read_text())
        if isinstance(state, dict):
            return state
    return None


def recorded(state: dict[str, object]) -> list[Recorded]:
    """The processes of `state`: the guard, the children, and the embedded Redis if that
    `up` started it, in the order they are to be stopped."""
    found: list[Recorded] = []
    entries = [state.get("guard"), *_list(state.get("children")), state.get("redis_process")]
    for entry in entries:
        if isinstance(entry, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                start = entry.get("start")
                found.append(
                    Recorded(
                        str(entry["role"]),
                        int(entry["pid"]),
                        int(start) if start is not None else None,
                    )
                )
    return found


def stop_orphans(home: Path, say: Callable[[str], None]) -> None:
    """Called by `up` holding the home's lock (so the `up` of `up.json` is dead): stop what
    that `up` left running, saying so, and remove its `up.json`."""
    state = read_state(home)
    if state is None:
        path = home / STATE_FILE
        if path.exists():
            kept = path.with_name(STATE_FILE + ".unreadable")
            with contextlib.suppress(OSError):
                path.replace(kept)
            say(
                f"retrain up: warning: {path} cannot be read, so what the previous retrain up "
                f"of this home left running (if anything) is not known; kept as {kept.name}. "
                "Check with: ps -ef | grep retrain"
            )
        return
    living = [p for p in recorded(state) if p.running()]
    if living:
        say(
            f"retrain up: the previous retrain up of this home (pid {state.get('pid', '?')}) "
            f"died and left {len(living)} process(es) running "
            f"({', '.join(map(str, living))}); stopping them first"
        )
        stop(living, patience=ORPHAN_STOP_S, hand_back=True)
    (home / STATE_FILE).unlink(missing_ok=True)


def stop(processes: list[Recorded], *, patience: float, hand_back: bool) -> None:
    """Stop `processes` as `up` would: the guard at once; workers and the scheduler with
    SIGTERM (and a second one for workers when `hand_back`: their jobs go back to the queue);
    whatever still runs after `patience` is killed; the embedded Redis last, with SIGTERM (it
    saves its data). SIGCONT wakes stopped ones so that they see their signals."""
    groups = {role: [p for p in processes if p.role == role] for role in ("guard", "redis")}
    children = [p for p in processes if p.role not in groups]
    for guard in groups["guard"]:
        guard.signal(signal.SIGKILL)
    for child in children:
        child.signal(signal.SIGTERM)
        child.signal(signal.SIGCONT)
    if hand_back and _wait(children, 2.0):
        # Workers still running are busy: a second SIGTERM (more than RQ's one second later,
        # or it counts as the same) hands their job back.
        for child in children:
            if child.role == "worker":
                child.signal(signal.SIGTERM)
    if _wait(children, patience):
        for child in children:
            child.signal(signal.SIGKILL)
        _wait(children, 10.0)
    for server in groups["redis"]:
        server.signal(signal.SIGTERM)
        server.signal(signal.SIGCONT)
        if _wait([server], 10.0):
            server.signal(signal.SIGKILL)


def guard(home: Path, up_pid: int) -> int:
    """The guard's life: wait on the lifeline; if `up` died, clean up after it."""
    fd = take()
    if fd is None:
        return 2
    with contextlib.suppress(OSError):
        first = os.read(fd, len(DONE))
        if first == DONE:
            return 0  # `up` stopped everything itself
        if first:
            wait_closed(fd)
    state = read_state(home)
    if state is None or state.get("pid") != up_pid:
        return 0  # a newer `up` owns this home now
    processes = recorded(state)
    children = [p for p in processes if p.role not in ("guard", "redis")]
    # The children stop by themselves (their lifelines): a worker may finish its job first.
    workers = any(p.role == "worker" for p in children)
    _wait(children, GUARD_PATIENCE_S if workers else SCHEDULER_STOP_S + 5.0)
    state = read_state(home)
    if state is None or state.get("pid") != up_pid:
        return 0  # a newer `up` took over (and stopped what was left)
    rest = [p for p in processes if p.role != "guard"]
    stop(rest, patience=10.0, hand_back=True)
    if not any(p.running() for p in rest):
        for server in (p for p in rest if p.role == "redis"):
            _forget_redis(home, server.pid)
        (home / STATE_FILE).unlink(missing_ok=True)
    return 0


def _forget_redis(home: Path, pid: int) -> None:
    """Remove redis.json if it still names the server `pid` just stopped (as `retrain redis
    stop` does), under the same lock as every command that starts or finds it."""
    from filelock import FileLock

    path = home / "redis.json"
    with FileLock(str(path) + ".lock"), contextlib.suppress(OSError, ValueError, KeyError):
        if int(json.loads(path.read_text())["pid"]) == pid:
            path.unlink()


def _wait(processes: list[Recorded], timeout: float) -> bool:
    """Wait until none of `processes` runs; True if some still do after `timeout`."""
    deadline = time.monotonic() + timeout
    while any(p.running() for p in processes):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)
    return False


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def main(argv: list[str]) -> int:
    """`python -m orchestrator.reaper HOME UP_PID`, started by `up` only."""
    # Ctrl-C in `up`'s terminal is `up`'s to handle; the guard is in a session of its own,
    # and a hang-up of that terminal is no reason to leave the children unwatched either.
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    return guard(Path(argv[0]), int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
