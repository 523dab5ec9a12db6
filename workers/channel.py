"""The worker's end of the job API (`workers/jobapi/retrain_run.py`): the job appends one
JSON object a line to a file this worker owns; a thread here tails it while the job runs,
streams metric points live to Redis (bounded per task, expiring, like live logs), and keeps
what the run reports when it ends: each series (summary and points), the defaults `connect`
saw, and the names and metadata `log_model` gave.

The file is written by user code: every line is parsed defensively (JSON only, never
executed), a bad one is counted and skipped, and what is kept is bounded.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.queue import keys
from orchestrator.queue.reports import MAX_MODEL_METADATA_BYTES, MAX_MODELS

if TYPE_CHECKING:
    from redis import Redis

log = structlog.get_logger("retrain.worker.channel")

TAIL_EVERY_S = 0.2
"""How often the worker reads what the job appended: the live delay a follower sees."""
READ_CHUNK = 8 * 1024 * 1024
"""Bytes read from the channel per pass at most."""
MAX_LINE_BYTES = 1024 * 1024
"""A longer line is no event (skipped, counted)."""
MAX_SERIES = 1000
"""Series a run may have; points of further names are dropped (the report's limit too)."""
MAX_KEPT_POINTS = 1_000_000
"""Points kept in the worker's memory for the report (16 bytes each); past it only each
series' summary (count, last, min, max) goes on."""
LIVE_BATCH = 500
"""Points per live stream entry."""
LIVE_MAX_POINTS = 200_000
"""Points a task streams live in full; past it each pass sends only each series' newest
point, so the live view stays current while Redis holds a bounded amount."""
LIVE_STREAM_MAXLEN = 10_000
LIVE_STREAM_TTL_S = 7 * 86400
"""Like live logs: a task's live metrics expire a week after their last point."""
MAX_PARAMS = 1000
MAX_PARAM_CHARS = 1024


@dataclass
class Series:
    """One metric series as the worker saw it: exact summary, points while memory allows."""

    count: int = 0
    last: float = 0.0
    step: float = 0
    min: float = math.inf
    max: float = -math.inf
    steps: array[float] = field(default_factory=lambda: array("d"))
    values: array[float] = field(default_factory=lambda: array("d"))

    def add(self, step: float, value: float, keep: bool) -> None:
        self.count += 1
        self.last, self.step = value, step
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if keep:
            self.steps.append(step)
            self.values.append(value)

    def extend(
        self, steps: array[float], values: array[float], last_step: float, room: int
    ) -> None:
        """A batch of points (`room`: how many of them memory may keep)."""
        self.count += len(values)
        self.last, self.step = values[-1], last_step
        self.min = min(self.min, min(values))
        self.max = max(self.max, max(values))
        if room > 0:
            self.steps.extend(steps[:room])
            self.values.extend(values[:room])

    def report(self, budget: int) -> dict[str, Any]:
        """The summary, and at most `budget` points (extremes kept, see `downsample`)."""
        return {
            "count": self.count,
            "last": self.last,
            "step": self.step,
            "min": self.min,
            "max": self.max,
            "points": downsample(list(zip(self.steps, self.values, strict=True)), budget),
        }


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no number a job may log")


def downsample(points: list[tuple[float, float]], budget: int) -> list[list[float]]:
    """At most `budget` points of `points` (in step order): the lowest and highest of each of
    `budget // 2` buckets, and the last point, so a sparkline keeps its spikes and its end."""
    if len(points) <= budget:
        return [[_int(s), v] for s, v in points]
    buckets = max(1, (budget - 1) // 2)
    size = len(points) / buckets
    kept: list[tuple[float, float]] = []
    for b in range(buckets):
        chunk = points[int(b * size) : max(int((b + 1) * size), int(b * size) + 1)]
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        kept.extend(sorted({low, high}, key=lambda p: p[0]))
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return [[_int(s), v] for s, v in kept[:budget]]


def _int(step: float) -> int | float:
    return int(step) if float(step).is_integer() else step


class Channel:
    """Tails `path` (the job's `RETRAIN_RUN_CHANNEL`) for task `task_id`; live points go to
    `redis` when given."""

    def __init__(
        self,
        path: Path,
        task_id: str,
        redis: Redis | None,
        say: Callable[[str], None] = lambda _note: None,
    ) -> None:
        self.path = path
        self.task_id = task_id
        self.redis = redis
        self.say = say
        self.series: dict[str, Series] = {}
        self.defaults: dict[str, Any] = {}
        self.models: dict[str, dict[str, Any]] = {}
        """Output-relative path -> {"name", "metadata"}, from `log_model`."""
        self.bad_lines = 0
        self._replaced = False
        self._offset = 0
        self._partial = b""
        self._kept = 0
        self._streamed = 0
        self._live_failed = False
        self._dropped_series = 0
        self._dropped_models = 0
        self._dropped_metadata = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    # -- the tail thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._tail, name="channel", daemon=True)
        self._thread.start()

    def _tail(self) -> None:
        while not self._stop.wait(TAIL_EVERY_S):
            try:
                self.drain()
            except Exception:  # the record is read again at the end; never stop the run
                log.exception("reading the job's channel failed", task=self.task_id)

    def stop(self) -> None:
        """Stop the tail thread (idempotent; `finish` does it too)."""
        self._stop.set()

    def finish(self, status: str) -> None:
        """The job ended: read the rest, close the live stream with an `end` entry."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        # What the job wrote up to its end, and no more: a process it left behind may go on
        # appending, and a channel replaced by something else must not be read forever.
        end = self._regular_size()
        while self._offset < end and self.drain(upto=end):
            pass
        if self.bad_lines:
            self.say(f"retrain_run: {self.bad_lines} lines of the job's channel were no events")
        if self._dropped_series:
            self.say(f"retrain_run: {self._dropped_series} points past {MAX_SERIES} series dropped")
        if self._dropped_models:
            self.say(
                f"retrain_run: {self._dropped_models} more log_model calls past {MAX_MODELS} "
                "models dropped"
            )
        if self._dropped_metadata:
            self.say(
                f"retrain_run: the metadata of {self._dropped_metadata} log_model calls was over "
                f"{MAX_MODEL_METADATA_BYTES} bytes and dropped"
            )
        if self.redis is not None and (self._streamed or self.series):
            self._live([], end=status)

    # -- reading ---------------------------------------------------------------------------

    def _regular_size(self) -> int:
        """The channel's size, if it still is the regular file the worker made (0 if not)."""
        try:
            found = os.lstat(self.path)
        except OSError:
            return 0
        return found.st_size if stat.S_ISREG(found.st_mode) else 0

    def drain(self, upto: int | None = None) -> int:
        """Read what the job appended since the last pass (up to `upto` bytes of the file);
        returns the bytes read. The job may replace the file: a link, a FIFO or a device is
        never opened through (it would block or never end), and reading stops there."""
        if self._replaced:
            return 0
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return self._refuse(f"is no longer a regular file ({exc.strerror})")
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                return self._refuse("is no longer a regular file")
            end = found.st_size if upto is None else min(found.st_size, upto)
            data = (
                os.pread(fd, min(READ_CHUNK, end - self._offset), self._offset)
                if (end > self._offset)
                else b""
            )
        finally:
            os.close(fd)
        if not data:
            return 0
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial, self.bad_lines = b"", self.bad_lines + 1
        wanted = [line for line in lines if line and len(line) <= MAX_LINE_BYTES]
        self.bad_lines += sum(1 for line in lines if len(line) > MAX_LINE_BYTES)
        events: list[Any]
        try:
            # One parse for the whole batch (the common case: every line one object); a
            # line that breaks it sends the batch through the line-by-line path.
            events = json.loads(b"[" + b",".join(wanted) + b"]", parse_constant=_no_constant)
            if len(events) != len(wanted):
                raise ValueError("a line held more than one value")
        except (ValueError, RecursionError):
            events = []
            for line in wanted:
                try:
                    events.append(json.loads(line, parse_constant=_no_constant))
                except (ValueError, RecursionError):
                    self.bad_lines += 1
        fresh: list[tuple[str, list[Any], list[Any]]] = []
        for event in events:
            batch = event.get("p") if type(event) is dict else None
            if type(batch) is dict:
                for name, pair in batch.items():
                    self._points(name, pair, fresh)
            else:
                self._event(event)
        if fresh:
            self._live(fresh)
        return len(data)

    def _refuse(self, why: str) -> int:
        """The job replaced its channel: say so once, read no more of it."""
        self._replaced = True
        self.say(f"retrain_run: the job's channel {why}; what it held so far was kept")
        return 0

    def _points(self, name: str, pair: Any, fresh: list[tuple[str, list[Any], list[Any]]]) -> None:
        """A batch of one series' points: [steps, values], checked at C speed (`array`
        refuses what is not a number; the parser refused NaN and infinities)."""
        try:
            if not 0 < len(name) <= 256 or type(pair) is not list or len(pair) != 2:
                raise ValueError("bad batch")
            steps, values = array("d", pair[0]), array("d", pair[1])
            if not values or len(steps) != len(values):
                raise ValueError("steps and values differ")
            if not all(map(math.isfinite, (min(values), max(values), min(steps), max(steps)))):
                raise ValueError("not finite")  # 1e999 parses as an infinity
        except (ValueError, TypeError, OverflowError):
            self.bad_lines += 1
            return
        series = self.series.get(name)
        if series is None:
            if len(self.series) >= MAX_SERIES:
                self._dropped_series += len(values)
                return
            series = self.series[name] = Series()
        room = max(0, MAX_KEPT_POINTS - self._kept)
        series.extend(steps, values, pair[0][-1], room)
        self._kept += min(room, len(values))
        fresh.append((name, pair[0], pair[1]))

    def _event(self, event: Any) -> None:
        if type(event) is not dict:
            self.bad_lines += 1
            return
        kind = event.get("k")
        if kind == "defaults" and isinstance(event.get("values"), dict):
            for key, item in event["values"].items():
                if len(self.defaults) >= MAX_PARAMS and key not in self.defaults:
                    break
                if (
                    isinstance(key, str)
                    and len(key) <= 256
                    and (len(json.dumps(item)) <= MAX_PARAM_CHARS)
                ):
                    self.defaults[key] = item
        elif kind == "model" and isinstance(event.get("path"), str):
            path = event["path"][:4096]
            if len(self.models) >= MAX_MODELS and path not in self.models:
                # The report carries at most MAX_MODELS: holding more only costs memory.
                self._dropped_models += 1
                return
            metadata = event.get("metadata")
            if not isinstance(metadata, dict):
                metadata = {}
            elif len(json.dumps(metadata, default=str)) > MAX_MODEL_METADATA_BYTES:
                self._dropped_metadata += 1
                metadata = {}
            self.models[path] = {"name": str(event.get("name") or "")[:256], "metadata": metadata}
        else:
            self.bad_lines += 1

    # -- live ------------------------------------------------------------------------------

    def _live(
        self, batches: list[tuple[str, list[Any], list[Any]]], end: str | None = None
    ) -> None:
        """Entries `p`: {series: [steps, values]}, at most `LIVE_BATCH` points each."""
        if self.redis is None:
            return
        if self._streamed >= LIVE_MAX_POINTS and batches:
            newest: dict[str, tuple[str, list[Any], list[Any]]] = {}
            for name, steps, values in batches:
                newest[name] = (name, steps[-1:], values[-1:])
            batches = list(newest.values())
        self._streamed += sum(len(values) for _n, _s, values in batches)
        stream = keys.metrics_stream(self.task_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name, steps, values in batches:
                for i in range(0, len(values), LIVE_BATCH):
                    part = {name: [steps[i : i + LIVE_BATCH], values[i : i + LIVE_BATCH]]}
                    data = json.dumps(part, separators=(",", ":"))
                    pipe.xadd(stream, {"p": data}, maxlen=LIVE_STREAM_MAXLEN, approximate=True)
            if end is not None:
                pipe.xadd(stream, {"end": end}, maxlen=LIVE_STREAM_MAXLEN, approximate=True)
            pipe.expire(stream, LIVE_STREAM_TTL_S)
            pipe.execute()
        except Exception as exc:  # a Redis blip costs the live view, never the record
            if not self._live_failed:
                self._live_failed = True
                log.warning("live metrics not sent", task=self.task_id, error=str(exc))

    def add_series(self, name: str, points: list[tuple[float, float]]) -> None:
        """Points read after the run (an MLflow store): the same series as logged points."""
        series = self.series.get(name)
        if series is None:
            if len(self.series) >= MAX_SERIES:
                self._dropped_series += len(points)
                return
            series = self.series[name] = Series()
        for step, value in points:
            keep = self._kept < MAX_KEPT_POINTS
            series.add(int(step) if float(step).is_integer() else step, value, keep)
            self._kept += keep

    # -- the report ------------------------------------------------------------------------

    def report_series(self, max_points: int) -> dict[str, dict[str, Any]]:
        """Every series with its summary and at most `max_points` points in all."""
        if not self.series:
            return {}
        budget = max(2, max_points // len(self.series))
        return {name: s.report(budget) for name, s in sorted(self.series.items())}

    def last_values(self) -> dict[str, float]:
        return {name: s.last for name, s in self.series.items()}
