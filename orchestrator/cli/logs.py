"""`retrain logs TASK [-f]`: a task's output, live from Redis while it runs, from the stored
`output.log` once it has finished."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer

from orchestrator.cli.context import runtime
from orchestrator.cli.lean import lean_task, never_ran, patiently, stream_reader

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.queue.plain import PlainRedis

STATUS_EVERY_S = 2.0
"""While following, how often the store is asked whether the task ended (a lost worker
never writes the end of its log)."""
FINISHED = ("completed", "failed", "aborted")
UNSUCCESSFUL = ("failed", "aborted")
"""Endings after which `-f` exits 1, so `retrain logs ID -f && next-step` stops there."""


def logs(
    task: Annotated[str, typer.Argument(help="Task id.")],
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing until the task ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", min=1, help="Only the last N lines to start with.")
    ] = None,
) -> None:
    """Print a task's output (stdout and stderr, in order). With -f, say how the run ended and
    exit 1 when it failed or was aborted."""
    # The task from the bare driver (tasks/records.py), and without -f the live log over a
    # socket of our own (queue/plain.py): no SQLAlchemy, no redis-py (most of its start-up).
    info = lean_task(task)
    task_id, status = info["id"], info["status"]
    if status == "draft":
        raise never_ran(info)
    if not (follow and status in ("queued", "running")) and _print_stored(info, tail):
        if follow:
            _ended(task_id, status)  # the end a live follow would have printed
        return
    with stream_reader(follow) as redis:
        from orchestrator.queue import keys

        stream = keys.logs_stream(task_id)
        if tail:
            # The newest entries only (the end entry counts among them), not the whole stream.
            entries = list(reversed(_read(redis, stream, "+", tail + 1, reverse=True)))
            pages: Iterable[list[tuple[str, dict[Any, Any]]]] = [_last_lines(entries, tail)]
        else:
            pages = _pages(redis, stream)
        # How the run ended comes from the store: an `end` entry (anyone with the worker's
        # Redis access can write one) only makes the follower ask the store now.
        claimed, cursor = None, "0-0"
        for page in pages:
            if page:
                _print_entries(page)
                claimed, cursor = _end(page) or claimed, page[-1][0]
        if not follow:
            if cursor == "0-0" and status in ("queued", "draft"):
                sys.stderr.write(f"retrain: task {task_id} is {status}: no output yet\n")
            return
        ended = status if status in FINISHED else None  # a lost worker wrote no end
        ran = status == "running"
        checked = time.monotonic() - (STATUS_EVERY_S if claimed else 0.0)
        while ended is None:
            batch = patiently(partial(_read, redis, stream, cursor, 1000, block_ms=1000))
            if batch:
                cursor = batch[-1][0]
                _print_entries(batch)
                claim = _end(batch)
                if claim is not None:
                    claimed = claim
                    checked = time.monotonic() - STATUS_EVERY_S
            if time.monotonic() - checked >= STATUS_EVERY_S:
                checked = time.monotonic()
                status = lean_task(task_id)["status"]
                ran = ran or status == "running"
                if status in FINISHED:
                    # Drain what came after the cursor (the worker's last lines), then stop.
                    for page in _pages(redis, stream, cursor):
                        _print_entries(page)
                    ended = status
                elif status == "queued" and ran and claimed == "released":
                    ended = "released"  # it ran, and went back to its queue
        _ended(task_id, ended)


def _ended(task_id: str, ended: str) -> None:
    """Say how the run ended; exit 1 when it did not succeed."""
    sys.stderr.write(f"retrain: task {task_id} ended: {ended}\n")
    if ended in UNSUCCESSFUL:
        raise typer.Exit(1)


def _end(entries: list[tuple[str, dict[Any, Any]]]) -> str | None:
    """How the run ended, from the log's `end` entry (`released`: it went back to its
    queue), or None while it goes on."""
    ends = [_field(e, "line") for _id, e in entries if _field(e, "stream") == "end"]
    return ends[-1] if ends else None


def _print_stored(info: dict[str, Any], tail: int | None) -> bool:
    """Print the run's stored `output.log`, or its last `tail` lines; False when it has none.
    The log can be gigabytes: it is fetched to a temporary file (verified against its hash)
    and read from there a block at a time, never held in memory whole."""
    import shutil
    import tempfile

    from orchestrator.storage.base import is_sha256

    for artifact in info["artifacts"]:
        if artifact.get("path") != "output.log":
            continue
        name = str(artifact.get("uri", "")).rstrip("/").rsplit("/", 1)[-1]
        if not is_sha256(name):
            continue
        folder = Path(tempfile.mkdtemp(prefix="retrain-log-"))
        try:
            path = folder / "output.log"
            runtime().blobs.get_file(name, path)
            with path.open("rb") as log:
                if tail:
                    _write([line.decode("utf-8", "replace") for line in _tail(log, tail)])
                else:
                    for line in log:
                        _write([line.decode("utf-8", "replace").rstrip("\r\n")])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return True
    return False


def _tail(log: BinaryIO, count: int, block: int = 64 * 1024) -> list[bytes]:
    """The last `count` lines of `log`, read backwards a block at a time."""
    log.seek(0, os.SEEK_END)
    end = position = log.tell()
    data = b""
    while position > 0 and data.count(b"\n") <= count:
        step = min(block, position)
        position -= step
        log.seek(position)
        data = log.read(step) + data
    lines = data[: end - position].splitlines()
    return lines[-count:]


def _read(
    redis: Redis | PlainRedis,
    stream: str,
    after: str,
    count: int | None,
    block_ms: int | None = None,
    *,
    reverse: bool = False,
) -> list[tuple[str, dict[Any, Any]]]:
    from orchestrator.errors import ServiceUnavailable

    try:
        raw: Any
        if reverse:
            raw = redis.xrevrange(stream, "+", "-", count=count)
        else:
            from orchestrator.queue.plain import PlainRedis
            from orchestrator.queue.streams import entries

            assert not isinstance(redis, PlainRedis)  # a follow reads through redis-py
            raw = entries(redis.xread({stream: after}, count=count, block=block_ms))
    except Exception as exc:  # redis-py's errors; the CLI prints one line
        raise ServiceUnavailable(f"cannot read the log from Redis: {exc}") from None
    return [(_text(entry_id), fields) for entry_id, fields in raw]


def _pages(
    redis: Redis | PlainRedis, stream: str, after: str | None = None
) -> Iterator[list[tuple[str, dict[Any, Any]]]]:
    """The stream's entries after `after` (all by default), a page at a time
    (`lean.stream_pages`): never the whole of a stream anyone can append to at once."""
    from orchestrator.cli.lean import stream_pages
    from orchestrator.errors import ServiceUnavailable

    pages = stream_pages(redis, stream, after)
    while True:
        try:
            raw = next(pages, None)
        except Exception as exc:  # redis-py's errors; the CLI prints one line
            raise ServiceUnavailable(f"cannot read the log from Redis: {exc}") from None
        if raw is None:
            return
        yield [(_text(entry_id), fields) for entry_id, fields in raw]


def _last_lines(
    entries: list[tuple[str, dict[Any, Any]]], count: int
) -> list[tuple[str, dict[Any, Any]]]:
    lines = [i for i, (_id, e) in enumerate(entries) if _field(e, "stream") != "end"]
    keep = set(lines[-count:])
    return [entry for i, entry in enumerate(entries) if i in keep or i not in lines]


def _print_entries(entries: list[tuple[str, dict[Any, Any]]]) -> None:
    _write([_field(e, "line") for _id, e in entries if _field(e, "stream") != "end"])


def _write(lines: list[str]) -> None:
    if lines:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()


def _field(fields: dict[Any, Any], name: str) -> str:
    value = fields.get(name, fields.get(name.encode(), b""))
    return _text(value)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
