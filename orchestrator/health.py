"""Liveness for `retrain health scheduler|worker` (container probes, systemd watchdogs).

Each daemon process touches a small file under `RETRAIN_HOME/run/` on every loop (the
scheduler) or heartbeat (each worker slot): `{role}-{name}.json` with its pid. A process is
healthy while its file is fresher than `--max-age` and its pid is alive. A scheduler also
writes what it is doing: whether it leads and fires, and each loop step's failure since
when (`orchestrator.scheduler.steps`); it is unhealthy while it leads without firing, or
while a step has failed for longer than its budget. Files only: the
check needs neither the database nor Redis, so a probe never restarts a healthy daemon
because a shared service blinked, and it runs on the same host (or container) as the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.processes import alive

ROLES = ("scheduler", "worker")
SCHEDULER_MAX_AGE_S = 60.0
"""A scheduler loops at least every poll interval (5 s by default)."""


def default_max_age(role: str, heartbeat_ttl_s: int) -> float:
    """An idle worker beats every `heartbeat_ttl_s - 15` s (75 s by default) and a busy one
    more often, so a worker is stale after `heartbeat_ttl_s + 30` s (120 s by default)."""
    return SCHEDULER_MAX_AGE_S if role == "scheduler" else float(max(heartbeat_ttl_s, 16) + 30)


def run_dir(home: Path) -> Path:
    return home / "run"


def beat(home: Path, role: str, name: str, detail: dict[str, Any] | None = None) -> None:
    """Record that this process is alive and looping (cheap: one small write), with what
    else the check judges (`detail`: the scheduler's firing state and steps)."""
    directory = run_dir(home)
    path = directory / f"{role}-{_safe(name)}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        record = {"pid": os.getpid(), "name": name, "time": time.time(), "detail": detail}
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    except OSError:
        pass  # a full or read-only disk must not stop the daemon; the probe will say so


def forget(home: Path, role: str, name: str) -> None:
    """A clean stop: the process is gone on purpose."""
    with contextlib.suppress(OSError):
        (run_dir(home) / f"{role}-{_safe(name)}.json").unlink()


@dataclass
class Beat:
    name: str
    pid: int
    age_s: float
    alive: bool
    detail: dict[str, Any] = field(default_factory=dict)


def beats(home: Path, role: str) -> list[Beat]:
    found = []
    now = time.time()
    for path in sorted(run_dir(home).glob(f"{role}-*.json")):
        try:
            data = json.loads(path.read_text())
            pid, name, when = int(data["pid"]), str(data["name"]), float(data["time"])
            detail = data.get("detail") or {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if not isinstance(detail, dict):
            detail = {}
        found.append(Beat(name, pid, max(0.0, now - when), alive(pid), detail))
    return found


def check(home: Path, role: str, max_age_s: float) -> tuple[bool, str]:
    """(healthy, one line saying why) for every `role` process of this home."""
    if role not in ROLES:
        raise ValueError(role)
    found = [b for b in beats(home, role) if b.alive]
    if not found:
        return False, f"no running {role} found under {run_dir(home)}"
    stale = [b for b in found if b.age_s > max_age_s]
    if stale:
        names = ", ".join(f"{b.name} (pid {b.pid}, {b.age_s:.0f} s ago)" for b in stale)
        return False, f"{role} not looping: {names}; limit {max_age_s:.0f} s"
    troubles = [
        f"{b.name} (pid {b.pid}) {t}" for b in found for t in troubles_of(b, now=time.time())
    ]
    if troubles:
        return False, f"{role} unhealthy: " + "; ".join(troubles)
    names = ", ".join(
        f"{b.name} (pid {b.pid}, {b.age_s:.0f} s ago{''.join(f'; {n}' for n in notes_of(b))})"
        for b in found
    )
    return True, f"{role} healthy: {names}"


def notes_of(b: Beat) -> list[str]:
    """What a healthy process should still say: its jobs' sandbox, and unsigned reports
    (no worker secret: anyone with Redis access can forge them)."""
    notes = []
    if b.detail.get("sandbox"):
        notes.append(f"sandbox {_line(b.detail['sandbox'])}")
    if b.detail.get("reports") == "unsigned":
        notes.append("reports unsigned")
    return notes


def troubles_of(b: Beat, *, now: float) -> list[str]:
    """What is wrong with a live, looping process: a leader that fires nothing, and each
    step failing for longer than its budget."""
    out = []
    if b.detail.get("leader") and b.detail.get("firing") is False:
        out.append(f"is not firing: {_line(b.detail.get('not_firing') or 'no triggers loaded')}")
    for step in b.detail.get("steps") or []:
        if not isinstance(step, dict) or not step.get("failing_since"):
            continue
        try:
            since = datetime.fromisoformat(str(step["failing_since"])).timestamp()
            budget = float(step.get("budget_s") or 0)
        except (ValueError, TypeError):
            continue
        if now - since > budget:
            out.append(
                f"step {step.get('name')} failing for {now - since:.0f} s (budget "
                f"{budget:.0f} s, {step.get('failures')} failures): {_line(step.get('last_error'))}"
            )
    return out


def _line(text: object) -> str:
    """The check prints one line: a multi-line error (every problem of a file) joined."""
    return " / ".join(str(text).splitlines())


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)[:120]
