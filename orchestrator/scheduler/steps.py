"""Containment for the daemon's loop: each named step fails alone, backs off, and is seen.

A step that raises is logged, counted and retried after a back-off that doubles with each
consecutive failure (capped), while the other steps go on. Each step keeps its last success,
its last error and since when it has been failing; `snapshot()` is what the daemon writes to
the store's scheduler state (for `retrain status` from any host) and to its health file (for
`retrain health scheduler` on this host). A step failing for longer than its budget makes the
scheduler unhealthy.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis import RedisError
from sqlalchemy.exc import OperationalError

from orchestrator.errors import RetrainError

log = structlog.get_logger("retrain.scheduler")

T = TypeVar("T")

STEPS = (
    "lease",
    "reload",
    "ingest",
    "poll",
    "release",
    "reconcile",
    "lost_workers",
    "schedules",
    "heartbeat",
)
"""Every step of the loop, in the order one iteration runs them (schedules tick on their own
thread)."""

BUDGET_S = {"reload": 300.0, "reconcile": 120.0, "lost_workers": 120.0}
"""How long a step may keep failing before `retrain health scheduler` says unhealthy;
`DEFAULT_BUDGET_S` for the others. Reload gets longer: the previous triggers stay in force
while someone fixes the file."""

DEFAULT_BUDGET_S = 60.0

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
"""A failing step is retried after 0.5 s, 1 s, 2 s, ... at most this long."""


TRANSIENT = (RetrainError, RedisError, OperationalError, OSError)
"""Failures a step expects (an outage, a conflict put in words): a warning without a
traceback. Anything else is a bug, logged with its traceback."""


class StepFailed(RetrainError):
    """A step could not do its work this time, for a reason it has already put in words."""


@dataclass
class StepState:
    """One step's record: times are UTC, `failures` counts consecutive failures."""

    name: str
    budget_s: float
    last_ok_at: dt.datetime | None = None
    last_error: str | None = None
    last_error_at: dt.datetime | None = None
    failing_since: dt.datetime | None = None
    failures: int = 0
    retry_at: float = 0.0
    """`time.monotonic()` before which the step is not tried again (backing off)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "budget_s": self.budget_s,
            "last_ok_at": _iso(self.last_ok_at),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "failing_since": _iso(self.failing_since),
            "failures": self.failures,
        }


class Steps:
    """The steps' records, shared by the loop and APScheduler's thread."""

    def __init__(
        self,
        *,
        backoff_cap_s: float = BACKOFF_CAP_S,
        budget_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff_cap_s = backoff_cap_s
        self.clock = clock
        self._lock = threading.Lock()
        self._states = {
            name: StepState(name, budget_s or BUDGET_S.get(name, DEFAULT_BUDGET_S))
            for name in STEPS
        }

    def get(self, name: str) -> StepState | None:
        return self._states.get(name)

    def due(self, name: str) -> bool:
        """False while the step backs off after a failure."""
        return self.clock() >= self._states[name].retry_at

    def run(
        self, name: str, work: Callable[[], T], *, settles: bool = True, backoff: bool = True
    ) -> T | None:
        """Run `work` as step `name` unless it is backing off; None when skipped or failed.
        `settles=False`: `work` records its own outcome when it returns (a reload that found
        the file invalid has failed without raising). `backoff=False`: retried whenever
        called (a schedule tick comes when its time comes).

        Error policy at the loop boundary: an expected failure (an outage, a conflict put in
        words) is a warning, anything else an error with its traceback; neither stops the
        loop. KeyboardInterrupt and SystemExit are not caught: shutdown is never swallowed."""
        if backoff and not self.due(name):
            return None
        try:
            result = work()
        except TRANSIENT as exc:
            self.failed(name, str(exc) or type(exc).__name__, backoff=backoff)
            log.warning("step failed; backing off", step=name, error=str(exc))
            return None
        except Exception as exc:
            self.failed(name, f"{type(exc).__name__}: {exc}", backoff=backoff)
            log.exception("step crashed; backing off", step=name)
            return None
        if settles:
            self.ok(name)
        return result

    def ok(self, name: str) -> None:
        with self._lock:
            state = self._states[name]
            if state.failing_since is not None:
                log.info("step recovered", step=name, failures=state.failures)
            state.last_ok_at = _now()
            state.last_error = None
            state.failing_since = None
            state.failures = 0
            state.retry_at = 0.0

    def failed(self, name: str, error: str, *, backoff: bool = True) -> None:
        """Record a failure; with `backoff`, the step is not tried again for a while."""
        with self._lock:
            state = self._states[name]
            now = _now()
            state.last_error = error
            state.last_error_at = now
            state.failing_since = state.failing_since or now
            state.failures += 1
            if backoff:
                delay = min(self.backoff_cap_s, BACKOFF_BASE_S * 2 ** min(state.failures - 1, 30))
                state.retry_at = self.clock() + delay

    def snapshot(self) -> list[dict[str, Any]]:
        """Every step's record as JSON-ready dicts, in loop order."""
        with self._lock:
            return [self._states[name].as_json() for name in STEPS]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
