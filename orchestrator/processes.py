"""Whether a process lives, for the pid files retrain keeps (embedded Redis, health beats,
up.json). No imports beyond the standard library: the health probe and fast commands use it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as gone: our own child is reaped here, another
    process's zombie is recognised from /proc (where there is one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def started_at(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux's /proc), or None where unknown.
    Recorded next to a pid, it tells the process apart from a later one given the same pid."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        # Field 22 of stat; the command name (field 2, in parentheses) may hold spaces.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return None


def same(pid: int, start: int | None) -> bool:
    """True while the process recorded as (`pid`, `start`) runs: alive, and not a newer
    process that reuses the pid (where start times are known)."""
    if not pid or not alive(pid):
        return False
    now = started_at(pid)
    return start is None or now is None or now == start
