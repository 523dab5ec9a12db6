"""`retrain logs TASK [-f]`: a task's output, live from Redis while it runs, from the stored
`output.log` once it has finished."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer

from orchestrator.cli import live
from orchestrator.cli.context import runtime
from orchestrator.cli.lean import lean_task, never_ran

if TYPE_CHECKING:

    pass

STATUS_EVERY_S = 2.0
"""While following, how often the store is asked whether the task ended (a lost worker
never writes the end of its log)."""
FINISHED = ("completed", "failed", "aborted")
UNSUCCESSFUL = ("failed", "aborted")
WHAT = "the log"
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
    with live.stream_reader(follow) as redis:
        from orchestrator.queue import keys

        stream = keys.logs_stream(task_id)
        if tail:
            # The newest entries only (the end entry counts among them), not the whole stream.
            entries = live.newest(redis, stream, tail + 1, WHAT)
            pages: Iterable[list[tuple[str, dict[Any, Any]]]] = [_last_lines(entries, tail)]
        else:
            pages = live.pages(redis, stream, WHAT)
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
            batch = live.patiently(partial(live.follow_read, redis, stream, cursor, WHAT))
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
                    for page in live.pages(redis, stream, WHAT, cursor):
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
    ends = [live.field(e, "line") for _id, e in entries if live.field(e, "stream") == "end"]
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


def _last_lines(
    entries: list[tuple[str, dict[Any, Any]]], count: int
) -> list[tuple[str, dict[Any, Any]]]:
    lines = [i for i, (_id, e) in enumerate(entries) if live.field(e, "stream") != "end"]
    keep = set(lines[-count:])
    return [entry for i, entry in enumerate(entries) if i in keep or i not in lines]


def _print_entries(entries: list[tuple[str, dict[Any, Any]]]) -> None:
    _write([live.field(e, "line") for _id, e in entries if live.field(e, "stream") != "end"])


def _write(lines: list[str]) -> None:
    if lines:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()


