"""`retrain status`: one screen on the scheduler, the queues, the workers and recent firings.

The data comes from `orchestrator.status` (a JSON-ready dict, printed as is by `--json`);
this module only fetches it the fast way and draws it with rich.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli import output
from orchestrator.cli.context import runtime
from orchestrator.errors import RetrainError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def status(
    as_json: JsonFlag = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes (--watch).")
    ] = 2.0,
) -> None:
    """Is the scheduler alive and caught up, what is queued where, which worker (and GPU) runs
    what, and what fired recently and why.

    Reads the store (a few aggregate queries) and Redis (two round trips). Without Redis it
    still shows what the store knows, says Redis is unreachable and exits 0; an unreachable
    database is an error (exit 2). With --watch --json, one JSON object per line per refresh.

    JSON: {time, database, redis: {url, reachable, error}, scheduler: {alive, leader,
    lease_ttl_s, recorded_leader, heartbeat_at, heartbeat_age_s, last_poll_at, cursor,
    newest_event, events_behind, oldest_unprocessed_at, oldest_unprocessed_age_s, firing,
    not_firing_reason, config: {path, loaded_at, error, problems}, steps: [{name, ok,
    last_ok_at, last_error, last_error_at, failing_since, failing_for_s, failures, budget_s,
    over_budget}]}, queues: [{name, queued, held, running, failed_24h,
    oldest_queued_at, oldest_queued_age_s, redis: {high, normal, low}, redis_waiting,
    workers, no_slot: [{gpus, jobs, largest_slot}]}], workers: [{name, host, pid, queues,
    gpus: [{index, uuid, name, memory_mib}],
    state, task, task_name, task_status, task_started, task_age_s, started, heartbeat,
    heartbeat_age_s, sandbox, reports, metric: {name, step, value} | null}],
    workers_lost_hidden, firings: [{time, trigger,
    decision, reason, event: {seq, kind, project, name, version, tags}, task, task_status}],
    waiting: [{trigger, reason, since, count, events: [{seq, kind, entity, project, name,
    version}]}], reports: {refused, last_refused: {at, reason}, scheduler_signed,
    unsigned_workers}}. Times are ISO
    8601 UTC, ages in seconds; Redis-only figures are null when Redis is unreachable.
    """
    if watch:
        _watch(as_json, interval)
        return
    data = snapshot()
    if as_json:
        output.print_json(data)
        return
    output.out.print(render(data))


def snapshot() -> dict[str, Any]:
    """Collect through the bare database driver when it can serve this database, else
    through the full store (which migrates a fresh database or reports the error)."""
    from orchestrator.cli.lean import lean_read
    from orchestrator.redact import redact_url
    from orchestrator.status import collect, read_redis, redis_url_from_env

    now = dt.datetime.now(dt.timezone.utc)
    redis = read_redis(redis_url_from_env(), now)
    database = redact_url(runtime().settings.database_url)
    return lean_read(lambda conn: collect(conn, redis, now=now, database=database))


def _watch(as_json: bool, interval: float) -> None:
    """Until Ctrl-C: redraw in place on a terminal, else print each snapshot in turn. A
    failure after the first snapshot is shown and retried, not fatal."""
    data: dict[str, Any] | None = snapshot()  # the first failure ends the command
    # Ctrl-C and SIGTERM end the watch, even where the parent started us with SIGINT ignored
    # (a background job of a script): "until Ctrl-C" must hold wherever it runs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        if output.out.is_terminal and not as_json:
            from rich.live import Live

            assert data is not None
            with Live(render(data), console=output.out, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(_render_or_error(), refresh=True)
        while True:
            if data is not None and as_json:
                print(json.dumps(data, default=str), flush=True)
            elif data is not None:
                output.out.print(render(data))
                output.out.print()
                output.out.file.flush()
            time.sleep(interval)
            data = _snapshot_or_note()
    except KeyboardInterrupt:
        return


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _snapshot_or_note() -> dict[str, Any] | None:
    try:
        return snapshot()
    except RetrainError as exc:
        output.note(f"retrain: {exc} (retrying)")
        return None


def _render_or_error() -> RenderableType:
    from rich.text import Text

    try:
        return render(snapshot())
    except RetrainError as exc:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return Text(f"{stamp} UTC  {exc} (retrying)", style="red")


# -- drawing ----------------------------------------------------------------------------------


def render(data: dict[str, Any]) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    # Worker advertisements, report errors and reasons come from Redis: anything in them that
    # a terminal would act on is shown escaped instead.
    data = output.safe_tree(data)
    now = dt.datetime.fromisoformat(data["time"])
    stamp = output.when(now)
    parts: list[RenderableType] = [Text(f"retrain status at {stamp} UTC", style="bold")]
    parts += [_overview(data, now), Text(), *_queues(data), Text(), *_workers(data), Text()]
    parts += _firings(data, now)
    parts += _waiting(data)
    parts += _refused(data, now)
    return Group(*parts)


def _refused(data: dict[str, Any], now: dt.datetime) -> list[RenderableType]:
    """Worker reports the scheduler refused (nothing at all when none were)."""
    from rich.text import Text

    reports = data.get("reports") or {}
    lines: list[RenderableType] = []
    if reports.get("scheduler_signed") is False:
        lines.append(
            Text(
                "reports unsigned: the scheduler has no worker secret, so anyone with Redis access "
                "can forge reports (set RETRAIN_WORKER_SECRET on the scheduler and the workers)",
                style="red",
            )
        )
    if reports.get("unsigned_workers"):
        lines.append(
            Text(
                f"reports unsigned by worker(s) {', '.join(reports['unsigned_workers'])}: "
                "they have no worker secret",
                style="red",
            )
        )
    if lines:
        lines.insert(0, Text())
    if not reports.get("refused"):
        return lines
    last = reports.get("last_refused") or {}
    when = output.when(dt.datetime.fromisoformat(last["at"])) if last.get("at") else "-"
    return [
        *lines,
        Text(),
        Text(
            f"reports refused: {reports['refused']} (kept in retrain:reports:dead); "
            f"last at {when}: {last.get('reason', '')}",
            style="yellow",
        ),
    ]


def _overview(data: dict[str, Any], now: dt.datetime) -> RenderableType:
    from rich.table import Table

    s = data["scheduler"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    if s["heartbeat_at"] is None:
        state = _text(
            ("never started", "yellow"), " (no heartbeat recorded; run `retrain scheduler`)"
        )
    elif s["alive"]:
        state = _text(("alive", "green"), f", heartbeat {_ago(s['heartbeat_age_s'])}")
    else:
        state = _text(("down", "red"), f": last heartbeat {_ago(s['heartbeat_age_s'])}")
    if s["leader"]:
        state.append(f"; leader {output.one_line(s['leader'])}")  # Redis's: anyone's
        if s["lease_ttl_s"] is not None:
            state.append(f" (lease {s['lease_ttl_s']:.1f} s left)")
    elif data["redis"]["reachable"]:
        state.append("; no leader holds the lease", style="yellow")
    elif s["recorded_leader"]:
        state.append(f"; last leader {output.one_line(s['recorded_leader'])}")
    if s["alive"] and not s["firing"]:
        state.append("; ")
        state.append("not firing", style="red")
        no_file = s["config"]["error"] and s["config"]["loaded_at"] is None
        # The file's error is on the triggers row below: say so instead of repeating it.
        why = "no valid triggers file is loaded (see triggers)" if no_file else None
        state.append(f": {why or s['not_firing_reason']}")
    grid.add_row("scheduler", state)
    failing = [step for step in s["steps"] if not step["ok"]]
    if failing:
        steps = _text()
        for i, step in enumerate(failing):
            steps.append("; " if i else "")
            steps.append(
                f"{step['name']} failing", style="red" if step["over_budget"] else "yellow"
            )
            steps.append(
                f" for {_ago(step['failing_for_s'], suffix='')} ({step['failures']} in a row, "
                f"budget {_ago(step['budget_s'], suffix='')}): {step['last_error']}"
            )
        grid.add_row("steps", steps)
    elif s["steps"]:
        grid.add_row("steps", _text((f"all {len(s['steps'])} OK", "green")))

    if s["cursor"] is None:
        events = _text(f"newest event {s['newest_event']}; no cursor yet")
    elif s["events_behind"]:
        events = _text(
            (f"{s['events_behind']} behind", "yellow"),
            f" (cursor {s['cursor']}, newest {s['newest_event']}; oldest unprocessed "
            f"{_ago(s['oldest_unprocessed_age_s'])})",
        )
    else:
        events = _text(("caught up", "green"), f" (cursor {s['cursor']})")
    if s["last_poll_at"]:
        events.append(f"; events last read {_when(s['last_poll_at'], now)}")
    grid.add_row("events", events)

    config = s["config"]
    if config["path"] is None:
        triggers = _text("no triggers file loaded yet")
    else:
        triggers = _text(config["path"])
        if config["loaded_at"]:
            triggers.append(f", loaded {_when(config['loaded_at'], now)}")
        if config["error"]:
            triggers.append(": ")
            triggers.append("error", style="red")
            kept = config["loaded_at"] is not None
            triggers.append(
                " (the previous triggers stay in force): "
                if kept
                else " (no triggers are loaded: nothing fires until it is fixed): "
            )
            triggers.append(config["error"])
        elif config["problems"]:
            triggers.append(": ")
            triggers.append(f"{len(config['problems'])} problem(s)", style="yellow")
        else:
            triggers.append(": ")
            triggers.append("OK", style="green")
    grid.add_row("triggers", triggers)
    for problem in config["problems"]:
        grid.add_row("", _text((problem, "yellow")))

    redis = data["redis"]
    if redis["reachable"]:
        grid.add_row("redis", _text(f"{redis['url']}: ", ("reachable", "green")))
    else:
        where = f"{redis['url']}: " if redis["url"] else ""
        grid.add_row(
            "redis",
            _text(where, ("unreachable", "red"), f": {redis['error']}; showing the store only"),
        )
    grid.add_row("database", _text(data["database"]))
    return grid


def _queues(data: dict[str, Any]) -> list[RenderableType]:
    from rich.text import Text

    queues = data["queues"]
    if not queues:
        return [_title("queues"), Text("no queue has been used yet")]
    rows, disagree = [], []
    for q in queues:
        in_redis: Text | str = "-"
        if q["redis"] is not None:
            r = q["redis"]
            in_redis = Text(f"{q['redis_waiting']} ({r['high']}/{r['normal']}/{r['low']})")
            # Equal when all is well; a job being picked up differs for a moment.
            if q["redis_waiting"] != q["queued"] - q["held"]:
                in_redis.stylize("yellow")
                disagree.append(q)
        rows.append(
            (
                q["name"],
                _count(q["queued"], "bold"),
                q["held"] or "-",
                _count(q["running"], "cyan"),
                _count(q["failed_24h"], "red"),
                _ago(q["oldest_queued_age_s"], suffix=""),
                in_redis,
                "-" if q["workers"] is None else _count(q["workers"], "", zero="yellow"),
            )
        )
    columns = [
        "queue",
        "queued",
        "held",
        "running",
        "failed 24h",
        "oldest waiting",
        "in Redis (h/n/l)",
        "workers",
    ]
    parts: list[RenderableType] = [_title("queues"), _table(columns, rows)]
    for q in queues:
        parts += [Text(line, style="yellow") for line in no_slot_lines(q)]
    for q in disagree:
        parts.append(
            Text(
                f"{q['name']}: {q['queued'] - q['held']} queued and not held in the store, "
                f"{q['redis_waiting']} job(s) waiting in Redis (a job being picked up shows "
                "here briefly; `retrain queue reconcile` repairs missing jobs)",
                style="yellow",
            )
        )
    return parts


def no_slot_lines(queue: dict[str, Any]) -> list[str]:
    """Why jobs of `queue` wait: no live worker has a slot with the GPUs they need."""
    lines = []
    for stuck in queue.get("no_slot") or ():
        if stuck["largest_slot"] is None:
            why = "no live worker listens on it"
        else:
            why = f"the largest live slot listening on it has {stuck['largest_slot']} GPU(s)"
        lines.append(
            f"{queue['name']}: {stuck['jobs']} job(s) need {stuck['gpus']} GPU(s) and wait: {why}"
        )
    return lines


def _metric(point: Any) -> str:
    """A running task's newest live point: `loss 0.31 @120`."""
    if not isinstance(point, dict):
        return "-"
    step = f" @{point['step']:g}" if isinstance(point.get("step"), int | float) else ""
    return f"{point['name']} {point['value']:.4g}{step}"


def _workers(data: dict[str, Any]) -> list[RenderableType]:
    from rich.text import Text

    workers = data["workers"]
    if workers is None:
        return [_title("workers"), Text("unknown: Redis is unreachable", style="yellow")]
    hidden = data["workers_lost_hidden"]
    note = [Text(f"{hidden} lost worker(s) silent for over 24 h not shown")] if hidden else []
    if data.get("workers_not_read"):
        unread, ahead = data["workers_not_read"], data.get("workers_ahead") or 0
        why = "the least recently seen"
        if ahead:
            why = f"{ahead} with a last beat in the future" + (
                ", the rest the least recently seen" if ahead < unread else ""
            )
        note.append(Text(f"{unread} more worker entries not read ({why})"))
    if not workers:
        return [_title("workers"), Text("no worker has announced itself"), *note]
    styles = {"idle": "green", "busy": "cyan", "stopping": "yellow", "lost": "red"}
    rows = []
    for w in workers:
        task: Text | str = "-"
        if w["task"]:
            task = Text(w["task_name"] or "?")
            if w["task_status"] and w["task_status"] != "running":
                task.append(f" ({w['task_status']} in the store)", style="yellow")
        lost = w["state"] == "lost"
        rows.append(
            (
                w["host"] or "-",
                w["name"],
                _gpus(w["gpus"]) or "-",
                Text(w["state"], style=styles.get(w["state"], "")),
                task,
                w["task"] or "-",
                _ago(w["task_age_s"], suffix=""),
                Text(f"last seen {_ago(w['heartbeat_age_s'])}", style="red")
                if lost
                else _ago(w["heartbeat_age_s"]),
                Text(w.get("sandbox") or "-", style="yellow")
                if w.get("sandbox") in ("none", "off")
                else w.get("sandbox") or "-",
                _metric(w.get("metric")),
            )
        )
    columns = [
        "host",
        "worker",
        "GPUs",
        "state",
        "task",
        "task id",
        "for",
        "heartbeat",
        "sandbox",
        "latest metric",
    ]
    return [_title("workers"), _table(columns, rows), *note]


def _firings(data: dict[str, Any], now: dt.datetime) -> list[RenderableType]:
    from rich.text import Text

    firings = data["firings"]
    if not firings:
        return [_title("recent firings"), Text("no trigger has fired yet")]
    styles = {"fired": "green", "skipped": "yellow"}
    rows = []
    for f in firings:
        e = f["event"]
        source = e["kind"].split(".", 1)[0]  # dataset, task, model or schedule
        event = f"{source} {e['project']}/{e['name']}".replace(" /", " ")
        if e["version"]:
            event += f" {e['version']}"
        if e["tags"]:
            event += f" [{', '.join(e['tags'])}]"
        event += f" {e['kind'].rsplit('.', 1)[-1]}"  # dataset.version.tagged -> tagged
        outcome: Text | str
        if f["task"]:
            outcome = Text(f["task"])
            if f["task_status"]:
                outcome.append(f" {f['task_status']}", style=_status_style(f["task_status"]))
            if f["reason"]:
                outcome.append(f" ({f['reason']})")
        else:
            outcome = f["reason"] or "-"
        rows.append(
            (
                _ago((now - dt.datetime.fromisoformat(f["time"])).total_seconds()),
                f["trigger"],
                Text(f["decision"], style=styles.get(f["decision"], "")),
                event,
                outcome,
            )
        )
    columns = ["when", "trigger", "decision", "event", "task / reason"]
    return [_title("recent firings"), _table(columns, rows)]


def _waiting(data: dict[str, Any]) -> list[RenderableType]:
    """Firings that cannot start: the trigger, why, and the events that wait for a fix of
    the triggers file or the template (nothing at all when none wait)."""
    from rich.text import Text

    waiting = data.get("waiting") or []
    if not waiting:
        return []
    rows = []
    for w in waiting:
        events = ", ".join(
            f"{e['seq']} {e['project']}/{e['name']}" + (f" {e['version']}" if e["version"] else "")
            for e in w["events"]
        )
        if w["count"] > len(w["events"]):
            events += f" (+{w['count'] - len(w['events'])} more)"
        rows.append((w["trigger"], str(w["count"]), Text(w["reason"], style="red"), events))
    note = Text(
        "they fire once the triggers file or the template is fixed "
        "(or: retrain triggers replay NAME --since TIME --yes)"
    )
    columns = ["trigger", "waiting", "why", "events"]
    return [Text(), _title("firings that cannot start"), _table(columns, rows), note]


# -- helpers ----------------------------------------------------------------------------------


def _title(text: str) -> Text:
    from rich.text import Text

    return Text(text, style="bold underline")


def _table(columns: list[str], rows: list[tuple[Any, ...]]) -> RenderableType:
    from rich.table import Table

    wrap = output.out.is_terminal
    grid = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold", no_wrap=not wrap)
    for row in rows:
        grid.add_row(*(cell if not isinstance(cell, (int, str)) else str(cell) for cell in row))
    return grid


def _text(*parts: str | tuple[str, str]) -> Text:
    """Plain text (never markup: names and errors may hold brackets)."""
    from rich.text import Text

    text = Text()
    for part in parts:
        if isinstance(part, tuple):
            text.append(part[0], style=part[1])
        else:
            text.append(part)
    return text


def _gpus(gpus: list[dict[str, Any]]) -> str:
    """`2x NVIDIA A100 80 GiB (0, 1)`: devices of one model together."""
    models: dict[str, list[str]] = {}
    for g in gpus:
        model = g["name"] or "GPU"
        if g["memory_mib"]:
            model += f" {g['memory_mib'] / 1024:.0f} GiB"
        models.setdefault(model, []).append(str(g["index"]))
    return ", ".join(
        f"{len(indices)}x {model} ({', '.join(indices)})" for model, indices in models.items()
    )


def _count(n: int, style: str, *, zero: str = "") -> Text:
    from rich.text import Text

    return Text(str(n), style=zero if n == 0 else style)


def _status_style(status: str) -> str:
    return {"completed": "green", "failed": "red", "aborted": "red", "running": "cyan"}.get(
        status, ""
    )


def _when(iso: str | None, now: dt.datetime) -> str:
    """`2026-11-21 00:34:33 (5m ago)`: a time of the snapshot taken at `now`."""
    if not iso:
        return "-"
    when = dt.datetime.fromisoformat(iso)
    age = (now - when).total_seconds()
    return f"{output.when(when)} ({_ago(age)})"


def _ago(seconds: float | None, *, suffix: str = " ago") -> str:
    """A duration people read at a glance: `4s`, `12m`, `3h 5m`, `2d 4h`."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        text = f"{s}s"
    elif s < 3600:
        text = f"{s // 60}m"
    elif s < 86400:
        text = f"{s // 3600}h {s % 3600 // 60}m"
    else:
        text = f"{s // 86400}d {s % 86400 // 3600}h"
    return text + suffix
