"""Progress reporting for long transfers: a rich bar on a terminal, silence when piped."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[int], None]


class Reporter(Protocol):
    def task(self, description: str, total: int) -> AbstractContextManager[Advance]:
        """A context manager yielding a callback that advances the bar by N units."""


class NullReporter:
    """Reports nothing (library use, pipes, tests)."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda _n: None


class RichReporter:
    """Transfer bars on stderr, so stdout stays clean for ids and JSON."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task_id, n)


def reporter_for_terminal() -> NullReporter | RichReporter:
    """A bar when stderr is a terminal, nothing otherwise."""
    return RichReporter() if sys.stderr.isatty() else NullReporter()
