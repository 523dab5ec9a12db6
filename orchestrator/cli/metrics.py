"""`retrain metrics TASK [-f] [--json] [--csv]`: a run's metric series (last, min, max, a
sparkline), live from Redis while it runs, from the store once it reported; and `retrain task
compare A B [C...]`: runs' parameters and metrics side by side, differences marked."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli import live as streams
from orchestrator.cli import output
from orchestrator.cli.context import runtime
from orchestrator.errors import UserError

if TYPE_CHECKING:

    pass

BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24
STATUS_EVERY_S = 2.0
"""While following, how often the store is asked whether the run ended (a lost worker never
writes the end of its live series)."""
REDRAW_EVERY_S = 0.5
MAX_ENTRY_BYTES = 256 * 1024
"""A live entry larger than this is skipped unread (a worker writes at most 500 points an
entry): anyone with the worker's Redis access can write the stream."""
MAX_LIVE_SERIES = 1000
MAX_LIVE_POINTS = 250_000
"""Series and points kept from a live stream; past them, entries are skipped."""
FINISHED = ("completed", "failed", "aborted")
UNSUCCESSFUL = ("failed", "aborted")
WHAT = "live metrics"


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """`values` as at most `width` block characters (each the mean of its bucket), scaled
    between their lowest and highest."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [
            _mean(values[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)])
            for i in range(width)
        ]
    low, high = min(values), max(values)
    if high - low <= 0:
        return BARS[len(BARS) // 2] * len(values)
    scale = (len(BARS) - 1) / (high - low)
    return "".join(BARS[round((v - low) * scale)] for v in values)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class Live:
    """Series rebuilt from a run's live stream (`workers/channel.py`). The stream is hostile
    input (anyone with the worker's Redis access can add to it): entries that are too large,
    do not parse or have the wrong shape are skipped, and an `end` entry only says the store
    should be asked now whether the run ended (`end_seen`), never how it ended."""

    def __init__(self) -> None:
        self.series: dict[str, dict[str, Any]] = {}
        self.end_seen = False
        self.points = 0

    def add(self, entries: list[tuple[str, Mapping[Any, Any]]]) -> None:
        for _id, fields in entries:
            if streams.field(fields, "end"):
                self.end_seen = True
                continue
            raw = fields.get("p", fields.get(b"p"))
            if raw is None or len(raw) > MAX_ENTRY_BYTES:
                continue
            try:
                batch = json.loads(raw)
            except (ValueError, TypeError, RecursionError):
                continue
            for name, pair in batch.items() if isinstance(batch, dict) else ():
                if not (
                    isinstance(pair, list)
                    and len(pair) == 2
                    and isinstance(pair[0], list)
                    and isinstance(pair[1], list)
                ):
                    continue
                for step, value in zip(pair[0], pair[1], strict=False):
                    if _number_or_none(value) is None or _number_or_none(step) is None:
                        continue
                    self._add(str(name), step, value)

    def _add(self, name: str, step: Any, value: float) -> None:
        s = self.series.get(name)
        if self.points >= MAX_LIVE_POINTS or (s is None and len(self.series) >= MAX_LIVE_SERIES):
            return
        self.points += 1
        if s is None:
            s = self.series[name] = {
                "count": 0, "last": value, "step": step, "min": value, "max": value,
                "points": [],
            }
        s["count"] += 1
        s["last"], s["step"] = value, step
        s["min"], s["max"] = min(s["min"], value), max(s["max"], value)
        s["points"].append([step, value])


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)  # JSON integers have any size: 10**400 is no float
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def metrics(
    task: Annotated[str, typer.Argument(help="Task id.")],
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Follow a running task until it ends.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON (with -f: one object a line per update).")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV: series,step,value.")] = False,
) -> None:
    """A run's metric series: last, min, max, points and a sparkline. With -f, follow a
    running task (exit 1 when it fails or is aborted)."""
    if as_json and as_csv:
        raise UserError("--json and --csv: choose one")
    from orchestrator.cli.lean import lean_read, lean_task, never_ran
    from orchestrator.tasks import records

    # The task and its stored series from the bare driver (tasks/records.py), and without -f
    # the live stream over a socket of our own (queue/plain.py): no SQLAlchemy, no redis-py.
    info = lean_task(task)
    task_id, status = info["id"], info["status"]
    if status == "draft":
        raise never_ran(info)
    stored = lean_read(lambda conn: records.series(conn, task_id))
    if stored or (status in FINISHED and not follow):
        series = stored or _from_metrics(info["metrics"])
        if follow and as_json:  # one object a line, as a live follow ends
            _json_line(task_id, status, series, live=False)
        else:
            _show(task_id, status, series, as_json, as_csv)
        if follow:
            _ended(task_id, status)
        return
    from orchestrator.queue import keys

    with streams.stream_reader(follow) as redis:
        stream = keys.metrics_stream(task_id)
        live = Live()
        cursor = "0-0"
        for batch in streams.pages(redis, stream, WHAT):
            live.add(batch)
            cursor = batch[-1][0]
        if not follow:
            _show(task_id, status, live.series, as_json, as_csv, live=True)
            return
        # How the run ended comes from the store alone: an `end` entry in the stream (which
        # anyone with the worker's Redis access can write) only makes the follower ask it now.
        ended = status if status in FINISHED else None
        drawn = time.monotonic()
        checked = drawn - STATUS_EVERY_S if live.end_seen else drawn
        updates = 0
        with _Redraw(enabled=output.out.is_terminal and not as_json and not as_csv) as screen:
            if as_json and live.series:  # points in the live stream: its worker runs it
                _json_line(task_id, "running", live.series)
                updates += 1
            while ended is None:
                batch = streams.patiently(partial(streams.follow_read, redis, stream, cursor, WHAT))
                if batch:
                    cursor = batch[-1][0]
                    live.add(batch)
                    if live.end_seen:
                        live.end_seen = False
                        checked = time.monotonic() - STATUS_EVERY_S
                    if as_json:
                        _json_line(task_id, "running", live.series)
                        updates += 1
                now = time.monotonic()
                if screen.enabled and now - drawn >= REDRAW_EVERY_S:
                    drawn = now
                    screen.update(_table(live.series))
                if ended is None and now - checked >= STATUS_EVERY_S:
                    checked = now
                    status = lean_task(task_id)["status"]
                    if status in FINISHED:
                        for batch in streams.pages(redis, stream, WHAT, cursor):
                            live.add(batch)
                        ended = status
        if as_json:
            _json_line(task_id, ended, live.series)
        else:
            _show(task_id, ended, live.series, False, as_csv, live=True)
        _ended(task_id, "failed" if ended == "timeout" else ended)


class _Redraw:
    """A table redrawn in place on a terminal (rich's Live); nothing when not on one."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._live: Any = None

    def __enter__(self) -> _Redraw:
        if self.enabled:
            from rich.live import Live as RichLive

            self._live = RichLive(console=output.out, auto_refresh=False, transient=True)
            self._live.__enter__()
        return self

    def update(self, renderable: Any) -> None:
        if self._live is not None:
            self._live.update(renderable, refresh=True)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)


def _from_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A run that reported numbers only (metrics.json): each as a one-point series."""
    return {
        name: {"count": 1, "last": v, "step": None, "min": v, "max": v, "points": []}
        for name, v in sorted(metrics.items())
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _show(
    task_id: str,
    status: str,
    series: Mapping[str, Mapping[str, Any]],
    as_json: bool,
    as_csv: bool,
    *,
    live: bool = False,
) -> None:
    if as_json:
        output.print_json({"task": task_id, "status": status, "live": live, "series": series})
        return
    if as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["series", "step", "value"])
        for name, s in sorted(series.items()):
            for step, value in s.get("points") or []:
                writer.writerow([output.safe(name), step, repr(float(value))])
        return
    if not series:
        output.note(f"task {task_id} is {status}: no metrics yet")
        return
    output.out.print(_table(series))


def _table(series: Mapping[str, Mapping[str, Any]]) -> Any:
    from rich.table import Table

    grid = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("series", "last", "min", "max", "step", "points", ""):
        grid.add_column(
            column, justify="left" if column in ("series", "") else "right", no_wrap=True
        )
    for name, s in sorted(series.items()):
        values = [float(p[1]) for p in s.get("points") or []]
        grid.add_row(
            output.one_line(name),
            _number(s["last"]),
            _number(s["min"]),
            _number(s["max"]),
            "-" if s.get("step") is None else str(s["step"]),
            str(s["count"]),
            sparkline(values),
        )
    return grid


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.6g}"


def _json_line(
    task_id: str, status: str | None, series: Mapping[str, Any], *, live: bool = True
) -> None:
    sys.stdout.write(
        json.dumps({"task": task_id, "status": status, "live": live, "series": series}) + "\n"
    )
    sys.stdout.flush()


def _ended(task_id: str, ended: str) -> None:
    sys.stderr.write(output.safe(f"retrain: task {task_id} ended: {ended}") + "\n")
    if ended in UNSUCCESSFUL:
        raise typer.Exit(1)


def compare(
    tasks: Annotated[list[str], typer.Argument(help="Two or more task ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Runs side by side: parameters (given and as the code logged them) and metrics (last
    value; min and max of series), rows that differ marked with *."""
    if len(tasks) < 2:
        raise UserError("task compare: give two or more task ids")
    rt = runtime()
    infos = [rt.tasks.get(t) for t in tasks]
    series = [rt.tasks.series(i.id) for i in infos]
    sections: dict[str, dict[str, list[Any]]] = {"parameters": {}, "logged": {}, "metrics": {}}

    def put(section: str, key: str, index: int, value: Any) -> None:
        sections[section].setdefault(key, [None] * len(infos))[index] = value

    for i, info in enumerate(infos):
        for key, value in info.parameters.items():
            put("parameters", key, i, value)
        for key, value in info.logged_params.items():
            put("logged", key, i, value)
        for key, value in info.metrics.items():
            put("metrics", key, i, value)
        for name, s in series[i].items():
            put("metrics", f"min({name})", i, s["min"])
            put("metrics", f"max({name})", i, s["max"])
    different = {
        f"{section}.{key}"
        for section, rows in sections.items()
        for key, values in rows.items()
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1
    }
    if as_json:
        output.print_json(
            {
                "tasks": [i.id for i in infos],
                **{s: dict(sorted(rows.items())) for s, rows in sections.items()},
                "different": sorted(different),
            }
        )
        return
    columns = ["", "name", *[i.id[:12] for i in infos]]
    rows: list[list[Any]] = [["", "task", *[i.label for i in infos]],
                             ["", "status", *[i.status for i in infos]]]
    titles = {"parameters": "param", "logged": "logged", "metrics": "metric"}
    for section, entries in sections.items():
        for key, values in sorted(entries.items()):
            mark = "*" if f"{section}.{key}" in different else ""
            rows.append([mark, f"{titles[section]} {key}",
                         *[_number(v) if isinstance(v, float) else v for v in values]])
    output.table(None, columns, rows)
