"""How commands print: tables for people, `--json` for scripts; data on stdout, the rest on
stderr. Colour only on a terminal (rich decides from the stream).

rich is imported only when a table or a console is used (`out`, `err`): JSON and the one-line
notes most commands print need none of it, and it costs ~50 ms to import."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

MAX_LIMIT = 2**63 - 1
"""The largest `--limit`: what SQLite's and PostgreSQL's integers hold (beyond it the driver
raised OverflowError / NumericValueOutOfRange, a traceback)."""

# Terminal control: C0 but newline and tab, DEL, C1, and the bidirectional overrides and
# isolates that make text read differently from what it is (U+202E turns `gpj.exe` around).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text: str) -> str:
    """`text` with every terminal control character shown escaped (`\\x1b`), never acted on:
    what people read comes from reports, worker advertisements and logs anyone with Redis
    access can write, and an escape sequence could retitle, clear or rewrite their terminal."""
    return _UNSAFE.sub(lambda m: ascii(m.group())[1:-1], text)


_LINE_BREAKS = re.compile("[\n\r\t\v\f\x85\u2028\u2029]")


def one_line(text: Any) -> str:
    """`text` made `safe` and kept on one line (line breaks shown escaped, `\\n`): for names
    and keys that come from a job (metrics, parameters, series, paths), which must not print
    lines of their own that read like retrain's."""
    return safe(_LINE_BREAKS.sub(lambda m: ascii(m.group())[1:-1], str(text)))


def safe_tree(value: Any) -> Any:
    """`value` (JSON-like data) with every string in it made `safe`, keys included: for
    renderables built from it (rich `Text`, tables), which `_SafeConsole` cannot see into."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, dict):
        return {safe_tree(k): safe_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_tree(v) for v in value]
    return value


_consoles: dict[str, Console] = {}


def _console(name: str) -> Console:
    if name not in _consoles:
        from rich.console import Console

        class _SafeConsole(Console):
            """rich passes control sequences through; every string printed here is `safe`."""

            def print(self, *objects: Any, **kwargs: Any) -> None:
                super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kwargs)

        if name == "out":
            # Piped output gets no width limit: every table row stays on one line for grep.
            width = None if sys.stdout.isatty() else 100_000
            _consoles[name] = _SafeConsole(highlight=False, soft_wrap=True, width=width)
        else:
            _consoles[name] = _SafeConsole(stderr=True, highlight=False, soft_wrap=True)
    return _consoles[name]


def __getattr__(name: str) -> Any:
    # `output.out` and `output.err`: made (and rich imported) on first use.
    if name in ("out", "err"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def print_json(data: Any) -> None:
    """Models (anything with pydantic's `model_dump`), lists of them, or plain data."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if hasattr(d, "model_dump") else d for d in data]
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    out = _console("out")
    wrap = out.is_terminal
    grid = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold", no_wrap=not wrap)
    for row in rows:
        grid.add_row(*(cell_text(c) for c in row))
    out.print(grid)


def cell_text(value: Any) -> str:
    return safe(_cell_text(value))


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return when(value)
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        return when(dt.datetime.fromisoformat(value))  # an ISO timestamp from a JSON-ready row
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def note(message: str) -> None:
    """A human remark on stderr (keeps stdout for the id or path a script captures). Plain
    text, as rich printed it (no markup, no highlighting), without importing rich."""
    sys.stderr.write(safe(message) + "\n")
    sys.stderr.flush()
