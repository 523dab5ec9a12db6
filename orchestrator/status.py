"""`retrain status`: what the scheduler, the queues and the workers are doing, as plain data.

One snapshot is a JSON-ready dict (see `collect`). The store part is a handful of aggregate
queries through a DB-API connection (the lean driver-only path, or a SQLAlchemy session's),
the Redis part two pipelined round trips. Nothing here imports SQLAlchemy, pydantic or rich:
the command must answer in well under half a second with 100,000 tasks in the store.

Redis is optional: when it cannot be reached the snapshot still holds everything the store
knows, says why Redis is missing, and leaves the Redis-only figures `null`.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.defaults import ENV_PREFIX, home_from_env
from orchestrator.queue import keys
from orchestrator.queue.embedded_auth import STATE_FILE, state_url
from orchestrator.scheduler.waiting import waiting_firings
from orchestrator.store.lean import Row, fetch, placeholders

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.queue.plain import PlainRedis

Status = dict[str, Any]

SCHEDULER_STATE = "main"
"""The scheduler's state row (`orchestrator.scheduler.engine.STATE`, not imported: it pulls
in SQLAlchemy)."""

ALIVE_WITHIN_S = 30.0
"""A scheduler whose last heartbeat is younger than this is alive: it beats every loop, which
runs at least every poll interval (5 s by default), so this allows a few slow iterations."""

FAILED_WINDOW_S = 24 * 3600
"""`failed_24h` counts tasks that failed this recently."""

LOST_SHOWN_S = 24 * 3600
"""A lost worker (its hash expired) stays on the display this long after its last beat."""

WORKERS_READ = 1000
"""The most worker entries status reads, the most recently seen first: anyone with the
workers' Redis access can add entries, and each costs a read and a row."""
ADVERTISED = ("name", "host", "pid", "queues", "gpus", "state", "task", "task_started",
              "started", "heartbeat", "sandbox", "reports")
"""The fields of a worker's advertisement status reads (HMGET): anyone with the workers'
Redis access can add millions of others to one (two million took status 8.6 s)."""
CLOCK_SKEW_S = 300
"""Worker entries whose last beat (their score) is further ahead of this clock are counted,
not read: a thousand entries scored far in the future would otherwise outrank every real
worker for good."""

REDIS_ONLY_QUEUES = 50
"""Queues that neither the store nor a live worker knows, only Redis, shown at most (those
with the most jobs waiting)."""

FIRINGS = 10
"""How many trigger decisions `recent firings` shows, newest first."""

REDIS_STATE_FILE = STATE_FILE
"""Where the embedded Redis records its URL (`orchestrator.queue.embedded_auth`, which,
unlike `orchestrator.queue.connection`, loads no pydantic)."""

RQ_QUEUE_PREFIX = keys.RQ_QUEUE_PREFIX
RQ_QUEUES = keys.RQ_QUEUES

TASKS = "tasks t JOIN projects p ON p.id = t.project_id"


# -- where things are -------------------------------------------------------------------------


def redis_url_from_env() -> str | None:
    """RETRAIN_REDIS_URL, else the running embedded server's URL for this home, else None.
    The embedded server is never started here: status only looks."""
    url = os.environ.get(f"{ENV_PREFIX}REDIS_URL")
    if url:
        return url
    return state_url(home_from_env())


# -- Redis ------------------------------------------------------------------------------------


@dataclass
class RedisView:
    """What Redis says: the lease, RQ's waiting jobs per RQ queue, and the workers."""

    url: str | None
    error: str | None = None
    leader: str | None = None
    lease_ttl_s: float | None = None
    waiting: dict[str, int] = field(default_factory=dict)
    """Jobs waiting per RQ queue name (`gpu`, `gpu:high`, ...)."""
    workers: list[Row] = field(default_factory=list)
    lost_hidden: int = 0
    not_read: int = 0
    """Worker entries left unread: past `WORKERS_READ`, the least recently seen, or `ahead`."""
    ahead: int = 0
    """Worker entries whose last beat is over `CLOCK_SKEW_S` ahead of this clock."""

    @property
    def reachable(self) -> bool:
        return self.error is None


def read_redis(url: str | None, now: dt.datetime) -> RedisView:
    """Ask Redis in two pipelined round trips; any failure becomes `error` (never raises)."""
    if url is None:
        return RedisView(
            None,
            error="RETRAIN_REDIS_URL is not set and the embedded Redis is not running "
            "(it starts with the first command that queues a task)",
        )
    from orchestrator.queue.plain import PlainRedis

    plain = PlainRedis.of(url)  # no redis-py import (most of this command's start-up)
    if plain is not None:
        try:
            return _read_redis(plain, url, now)
        except (OSError, ValueError) as exc:
            return RedisView(url, error=str(exc) or type(exc).__name__)
        finally:
            plain.close()
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    except ValueError as exc:
        return RedisView(url, error=f"{ENV_PREFIX}REDIS_URL: {exc}")
    try:
        return _read_redis(client, url, now)
    except (redis.RedisError, OSError) as exc:
        return RedisView(url, error=str(exc) or type(exc).__name__)
    finally:
        client.close()


def _read_redis(client: Redis | PlainRedis, url: str, now: dt.datetime) -> RedisView:
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.SCHEDULER_LEASE)
    pipe.pttl(keys.SCHEDULER_LEASE)
    pipe.smembers(RQ_QUEUES)
    pipe.zcard(keys.WORKERS)
    horizon = now.timestamp() + CLOCK_SKEW_S
    pipe.zcount(keys.WORKERS, f"({horizon}", "+inf")
    pipe.zrevrangebyscore(keys.WORKERS, horizon, "-inf", 0, WORKERS_READ, withscores=True)
    leader, pttl, queue_keys, total, ahead, members = pipe.execute()

    rq_keys = sorted(k for k in (_text(q) for q in queue_keys) if k.startswith(RQ_QUEUE_PREFIX))
    names = [(_text(m), float(score)) for m, score in members]
    pipe = client.pipeline(transaction=False)
    for key in rq_keys:
        pipe.llen(key)
    for name, _ in names:
        pipe.hmget(keys.worker_key(name), list(ADVERTISED))
    replies = pipe.execute()

    view = RedisView(url, leader=_text(leader) if leader is not None else None)
    view.lease_ttl_s = pttl / 1000 if isinstance(pttl, int) and pttl >= 0 else None
    view.not_read = max(0, int(total) - len(names))
    view.ahead = int(ahead)
    view.waiting = {
        key.removeprefix(RQ_QUEUE_PREFIX): int(n)
        for key, n in zip(rq_keys, replies[: len(rq_keys)], strict=True)
    }
    for (name, score), values in zip(names, replies[len(rq_keys) :], strict=True):
        # Anyone with Redis access writes these: a score or field that makes no sense is
        # shown as it is, never a traceback.
        seen = _epoch(score) or now
        fields = {k: _text(v) for k, v in zip(ADVERTISED, values or (), strict=False) if v}
        if fields:
            view.workers.append(_worker(name, fields))
        elif (now - seen).total_seconds() <= LOST_SHOWN_S:
            view.workers.append(_lost_worker(name, seen))
        else:
            view.lost_hidden += 1
    view.workers.sort(key=lambda w: str(w["name"]))
    _latest_points(client, view.workers)
    return view


def _latest_points(client: Redis | PlainRedis, workers: list[Row]) -> None:
    """Each busy worker's task's newest live metric point (`metric`: name, step, value),
    from the tail of its live metrics stream (one round trip for all of them). The stream is
    written by workers: an entry that does not parse is skipped, never a traceback. Each
    task's stream is read once, however many workers (anyone can advertise one) name it."""
    tasks = sorted({str(w["task"]) for w in workers if w.get("task")})
    for w in workers:
        w["metric"] = None
    if not tasks:
        return
    pipe = client.pipeline(transaction=False)
    for task in tasks:
        pipe.xrevrange(keys.metrics_stream(task), count=5)
    points: dict[str, Row] = {}
    for task, entries in zip(tasks, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(entries, Exception):
            continue
        for _entry_id, fields in entries or ():
            point = _point(fields)
            if point is not None:
                points[task] = point
                break
    for w in workers:
        point = points.get(str(w["task"])) if w.get("task") else None
        w["metric"] = dict(point) if point is not None else None


def _point(fields: Any) -> Row | None:
    raw = fields.get(b"p", fields.get("p")) if isinstance(fields, dict) else None
    if raw is None or len(raw) > MAX_POINT_ENTRY:
        return None
    try:
        batch = json.loads(raw)
        name, (steps, values) = next(reversed(list(batch.items())))
        value, step = values[-1], steps[-1]
    except (ValueError, TypeError, AttributeError, StopIteration, IndexError):
        return None
    if not _finite(value):
        return None
    return {"name": str(name)[:200], "step": step if _finite(step) else None, "value": value}


def _finite(number: Any) -> bool:
    """A number JSON can hold and `:g` can show: JSON parsing gives `Infinity` and `NaN`
    (which `--json` would print, and no JSON reader takes) and integers of any size."""
    if not isinstance(number, int | float) or isinstance(number, bool):
        return False
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer too large for a float
        return False


MAX_POINT_ENTRY = 1 << 20
"""Bytes of one live metrics entry `status` parses at most (a worker's are far smaller)."""


def _epoch(seconds: float) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _worker(name: str, fields: dict[str, str]) -> Row:
    return {
        "name": fields.get("name") or name,
        "host": fields.get("host") or None,
        "pid": _int(fields.get("pid")),
        "queues": _json_list(fields.get("queues")),
        "gpus": [_gpu(g) for g in _json_list(fields.get("gpus")) if isinstance(g, dict)],
        "state": fields.get("state") or "idle",
        "task": fields.get("task") or None,
        "task_started": _iso(fields.get("task_started") or None),
        "started": _iso(fields.get("started") or None),
        "heartbeat": _iso(fields.get("heartbeat") or None),
        "sandbox": fields.get("sandbox") or None,
        "reports": fields.get("reports") or None,
    }


def _lost_worker(name: str, seen: dt.datetime) -> Row:
    return {
        "name": name,
        "host": None,
        "pid": None,
        "queues": [],
        "gpus": [],
        "state": "lost",
        "task": None,
        "task_started": None,
        "started": None,
        "sandbox": None,
        "reports": None,
        "heartbeat": _iso(seen),
    }


def _gpu(raw: dict[str, Any]) -> Row:
    return {
        "index": _int(raw.get("index")),
        "uuid": raw.get("uuid"),
        "name": raw.get("name"),
        "memory_mib": _int(raw.get("memory_mib")),
    }


# -- the store --------------------------------------------------------------------------------


def _scheduler_row(conn: Any) -> Row | None:
    rows = fetch(
        conn,
        "SELECT cursor, leader, heartbeat_at, last_poll_at, config_path, config_error, "
        "config_loaded_at, config_problems, steps, reports_signed, reports_refused, "
        "last_refused_at, last_refused_reason FROM scheduler_state "
        "WHERE name = %s",
        [SCHEDULER_STATE],
    )
    return rows[0] if rows else None


def _lag(conn: Any, cursor: int | None) -> tuple[int, Row | None]:
    """The newest event's sequence number, and the oldest event past the cursor."""
    newest = fetch(conn, "SELECT MAX(seq) AS seq FROM events", [])[0]["seq"] or 0
    if cursor is None or newest <= cursor:
        return int(newest), None
    rows = fetch(
        conn, "SELECT seq, created_at FROM events WHERE seq > %s ORDER BY seq LIMIT 1", [cursor]
    )
    return int(newest), rows[0] if rows else None


def _active(conn: Any) -> list[Row]:
    """Queued and running tasks per queue: a range of `ix_tasks_status`, never the
    finished ones."""
    return fetch(
        conn,
        "SELECT queue, status, held, COUNT(*) AS n, MIN(queued_at) AS oldest FROM tasks "
        "WHERE status IN ('queued', 'running') GROUP BY queue, status, held",
        [],
    )


def _failed_since(conn: Any, since: dt.datetime) -> dict[str, int]:
    rows = fetch(
        conn,
        "SELECT queue, COUNT(*) AS n FROM tasks WHERE status = 'failed' AND finished_at >= %s "
        "GROUP BY queue",
        [_bind_time(conn, since)],
    )
    return {r["queue"]: int(r["n"]) for r in rows}


def _tasks(conn: Any, ids: Sequence[str]) -> dict[str, Row]:
    if not ids:
        return {}
    # Only placeholders are joined into the SQL; the ids are bound parameters.
    marks = placeholders(len(ids))
    sql = f"SELECT t.id, p.path AS project, t.name, t.status FROM {TASKS} WHERE t.id IN ({marks})"  # noqa: S608
    rows = fetch(conn, sql, list(ids))
    return {r["id"]: r for r in rows}


def _firings(conn: Any, limit: int) -> list[Row]:
    rows = fetch(
        conn,
        "SELECT f.created_at, f.trigger_name, f.decision, f.reason, f.task_id, f.event_seq, "
        "e.kind, e.project, e.name, e.tags, e.payload, t.status AS task_status "
        "FROM trigger_firings f JOIN events e ON e.seq = f.event_seq "
        "LEFT JOIN tasks t ON t.id = f.task_id ORDER BY f.id DESC LIMIT %s",
        [limit],
    )
    out = []
    for r in rows:
        payload = _json(r["payload"])
        payload = payload if isinstance(payload, dict) else {}
        tags = _json(r["tags"])
        out.append(
            {
                "time": _iso(r["created_at"]),
                "trigger": r["trigger_name"],
                "decision": r["decision"],
                "reason": r["reason"] or "",
                "event": {
                    "seq": int(r["event_seq"]),
                    "kind": r["kind"],
                    "project": r["project"],
                    "name": r["name"],
                    "version": payload.get("version"),
                    "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
                },
                "task": r["task_id"],
                "task_status": r["task_status"],
            }
        )
    return out


# -- the snapshot -----------------------------------------------------------------------------


def collect(
    conn: Any,
    redis: RedisView,
    *,
    now: dt.datetime | None = None,
    database: str = "",
    firings: int = FIRINGS,
) -> Status:
    """The snapshot `retrain status --json` prints.

    Times are ISO 8601 UTC strings, ages seconds before `now` (floats); `null` where unknown.

    - `time`, `database` (URL, password hidden), `redis`: {`url`, `reachable`, `error`}.
    - `scheduler`: `alive` (heartbeat younger than 30 s), `leader` and `lease_ttl_s` (the Redis
      lease; null without Redis), `recorded_leader` (who last wrote the heartbeat),
      `heartbeat_at`, `heartbeat_age_s`, `last_poll_at` (the last poll that read events),
      `cursor` (null: the scheduler never ran), `newest_event`, `events_behind`,
      `oldest_unprocessed_at`, `oldest_unprocessed_age_s`, `firing` (the leader is alive,
      has a valid triggers file loaded and its poll step is not failing), `not_firing_reason`
      (null while firing), `config`: {`path`, `loaded_at` (null: the leader has no valid
      file loaded, nothing fires), `error` (null when the file loaded), `problems` (what the
      loaded file refers to and cannot resolve, e.g. a missing template)}, and `steps`: per
      loop step of the leader {`name`, `ok` (not failing), `last_ok_at`, `last_error`,
      `last_error_at`, `failing_since`, `failing_for_s`, `failures` (in a row), `budget_s`,
      `over_budget` (failing for longer than its budget)}, as of its last heartbeat.
    - `queues`: one per queue that has active tasks, recent failures, a live worker, or jobs
      waiting in RQ (of queues only Redis names, the `REDIS_ONLY_QUEUES` with the most):
      `name`, `queued` (held included), `held`, `running`, `failed_24h`, `oldest_queued_at`,
      `oldest_queued_age_s`, `redis` ({`high`, `normal`, `low`} jobs waiting in RQ) and
      `redis_waiting` (their sum), `workers` (live workers listening), `no_slot` (jobs no
      live slot is big enough for: see `jobs_without_a_slot`); the last four null without
      Redis.
    - `workers` (null without Redis): `name`, `host`, `pid`, `queues`, `gpus` (list of
      {`index`, `uuid`, `name`, `memory_mib`}), `state` (idle, busy, stopping or lost),
      `task`, `task_name` (`project/name`), `task_status` (in the store), `task_started`,
      `task_age_s`, `started`, `heartbeat` (for a lost worker: when it was last seen),
      `heartbeat_age_s`, `sandbox` (what its jobs run in: `landlock-abi-N`, `none`, `off`,
      with `, as USER`), `reports` (`signed` or `unsigned`). `workers_lost_hidden`: lost
      workers silent for over 24 h, left out. `workers_not_read`: worker entries past the
      `WORKERS_READ` most recently seen, not read, and those of `workers_ahead`, whose last
      beat is over `CLOCK_SKEW_S` ahead of this clock.
    - `firings`: the newest trigger decisions: `time`, `trigger`, `decision` (fired, skipped,
      coalesced, superseded), `reason`, `event` ({`seq`, `kind`, `project`, `name`,
      `version`, `tags`}), `task`, `task_status`.
    - `reports`: `refused` (worker reports the scheduler refused: malformed, oversized,
      unsigned, or not from the worker bound to the run's attempt), as the leading scheduler
      counted them in the store (the entries are in `retrain:reports:dead` for inspection;
      null before a scheduler ran) and `last_refused`
      ({`at`, `reason`}, or null), `scheduler_signed` (whether the leading scheduler
      checks signatures, as it recorded in the store; null before one did) and `unsigned_workers`
      (names of workers that sign nothing: no worker secret).
    - `waiting`: triggers whose firings could not start and wait (see
      `orchestrator.scheduler.waiting.waiting_firings`): `trigger`, `reason`, `since`,
      `count`, `events` ([{`seq`, `kind`, `entity`, `project`, `name`, `version`}]).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    state = _scheduler_row(conn)
    cursor = int(state["cursor"]) if state is not None else None
    newest, oldest_event = _lag(conn, cursor)
    workers = redis.workers if redis.reachable else None
    names = _tasks(conn, sorted({w["task"] for w in workers or () if w["task"]}))

    heartbeat = _utc(state["heartbeat_at"]) if state else None
    heartbeat_age = _age(heartbeat, now)
    # A leader that stopped cleared `leader` (scheduler/daemon.py `_sign_off`).
    signed_off = state is not None and state["leader"] is None
    alive = heartbeat_age is not None and heartbeat_age < ALIVE_WITHIN_S and not signed_off
    steps = _steps(state["steps"] if state else None, now)
    reason = _not_firing(state, alive, heartbeat_age, steps)
    scheduler = {
        "alive": alive,
        "leader": redis.leader,
        "lease_ttl_s": redis.lease_ttl_s,
        "recorded_leader": state["leader"] if state else None,
        "heartbeat_at": _iso(heartbeat),
        "heartbeat_age_s": heartbeat_age,
        "last_poll_at": _iso(state["last_poll_at"]) if state else None,
        "cursor": cursor,
        "newest_event": newest,
        "events_behind": max(0, newest - cursor) if cursor is not None else None,
        "oldest_unprocessed_at": _iso(oldest_event["created_at"]) if oldest_event else None,
        "oldest_unprocessed_age_s": _age(_utc(oldest_event["created_at"]), now)
        if oldest_event
        else None,
        "firing": reason is None,
        "not_firing_reason": reason,
        "config": {
            "path": state["config_path"] if state else None,
            "loaded_at": _iso(state["config_loaded_at"]) if state else None,
            "error": (state["config_error"] or None) if state else None,
            "problems": [
                str(p) for p in _json_list_of(state["config_problems"] if state else None)
            ],
        },
        "steps": steps,
    }
    since = now - dt.timedelta(seconds=FAILED_WINDOW_S)
    return {
        "time": _iso(now),
        "database": database,
        "redis": {"url": _redact(redis.url), "reachable": redis.reachable, "error": redis.error},
        "scheduler": scheduler,
        "queues": _queues(_active(conn), _failed_since(conn, since), redis, now),
        "workers": [_worker_out(w, names, now) for w in workers] if workers is not None else None,
        "workers_lost_hidden": redis.lost_hidden,
        "workers_not_read": redis.not_read,
        "workers_ahead": redis.ahead,
        "firings": _firings(conn, firings),
        "waiting": waiting_firings(conn),
        "reports": {
            "refused": int(state["reports_refused"] or 0) if state else None,
            "last_refused": (
                {
                    "at": _iso(_utc(state["last_refused_at"])),
                    "reason": str(state["last_refused_reason"])[:500],
                }
                if state and state["last_refused_reason"]
                else None
            ),
            "scheduler_signed": (
                None if state is None or state["reports_signed"] is None
                else bool(state["reports_signed"])
            ),
            "unsigned_workers": sorted(
                w["name"] for w in workers or [] if w.get("reports") == "unsigned"
            ),
        },
    }


def _steps(raw: Any, now: dt.datetime) -> list[Row]:
    """The leader's steps as it recorded them, with how long each has been failing."""
    out = []
    for step in _json_list_of(raw):
        if not isinstance(step, dict):
            continue
        since = _utc(step.get("failing_since"))
        failing_for = _age(since, now)
        budget = float(step.get("budget_s") or 0)
        out.append(
            {
                "name": str(step.get("name")),
                "ok": since is None,
                "last_ok_at": _iso(step.get("last_ok_at")),
                "last_error": step.get("last_error"),
                "last_error_at": _iso(step.get("last_error_at")),
                "failing_since": _iso(since),
                "failing_for_s": failing_for,
                "failures": int(step.get("failures") or 0),
                "budget_s": budget,
                "over_budget": failing_for is not None and failing_for > budget,
            }
        )
    return out


def _not_firing(
    state: Row | None, alive: bool, heartbeat_age: float | None, steps: list[Row]
) -> str | None:
    """Why no trigger can fire now, in words; None while the leader fires."""
    if state is None or heartbeat_age is None:
        return "no scheduler has run yet"
    if not alive:
        if state["leader"] is None:
            return f"the scheduler stopped (last heartbeat {heartbeat_age:.0f} s ago)"
        return f"the scheduler is down (last heartbeat {heartbeat_age:.0f} s ago)"
    if state["config_loaded_at"] is None:
        error = state["config_error"]
        if error:
            return f"no valid triggers file is loaded: {error}"
        return "no triggers file is loaded yet"
    for step in steps:
        if step["name"] == "poll" and not step["ok"]:
            return f"the poll step is failing: {step['last_error']}"
    return None


def _queues(
    active: Iterable[Row], failed: dict[str, int], redis: RedisView, now: dt.datetime
) -> list[Row]:
    rows: dict[str, Row] = {}

    def row(name: str) -> Row:
        if name not in rows:
            rows[name] = {
                "name": name,
                "queued": 0,
                "held": 0,
                "running": 0,
                "failed_24h": 0,
                "oldest_queued_at": None,
                "oldest_queued_age_s": None,
                "redis": None,
                "redis_waiting": None,
                "workers": None,
                "no_slot": None,
            }
        return rows[name]

    for r in active:
        target = row(r["queue"])
        count = int(r["n"])
        if r["status"] == "running":
            target["running"] += count
            continue
        target["queued"] += count
        if r["held"]:
            target["held"] += count
        oldest = _utc(r["oldest"])
        current = _utc(target["oldest_queued_at"])
        if oldest is not None and (current is None or oldest < current):
            target["oldest_queued_at"] = _iso(oldest)
            target["oldest_queued_age_s"] = _age(oldest, now)
    for name, count in failed.items():
        row(name)["failed_24h"] = count
    if redis.reachable:
        listening: dict[str, int] = {}
        for w in redis.workers:
            if w["state"] != "lost":
                for name in {_base_queue(str(q)) for q in w["queues"]}:
                    listening[name] = listening.get(name, 0) + 1
        for name in listening:
            row(name)
        per_queue: dict[str, dict[str, int]] = {}
        for rq_name, count in redis.waiting.items():
            base, priority, _gpus = keys.split_rq_queue(rq_name)
            per = per_queue.setdefault(base, dict.fromkeys(keys.PRIORITIES, 0))
            per[priority] += count
        # Queues only Redis names (anyone with the workers' `rq:*` access can register a
        # million): those with jobs waiting, the most first, `REDIS_ONLY_QUEUES` at most.
        only_redis = [
            (sum(per.values()), name)
            for name, per in per_queue.items()
            if name not in rows and sum(per.values()) > 0
        ]
        for _count, name in heapq.nlargest(REDIS_ONLY_QUEUES, only_redis):
            row(name)
        no_slot = jobs_without_a_slot(redis)
        for name, target in rows.items():
            per = per_queue.get(name, dict.fromkeys(keys.PRIORITIES, 0))
            target["redis"] = per
            target["redis_waiting"] = sum(per.values())
            target["workers"] = listening.get(name, 0)
            target["no_slot"] = no_slot.get(name, [])
    return [rows[name] for name in sorted(rows)]


def jobs_without_a_slot(redis: RedisView) -> dict[str, list[Row]]:
    """Per queue, the jobs waiting in Redis that no live worker can take because none has a
    slot with as many GPUs as they need (jobs are routed by size, see `keys.sized_queue`):
    [{`gpus`, `jobs`, `largest_slot` (GPUs of the biggest live slot on the queue, null when
    no worker listens)}]. They wait, and this says why, instead of running on too few GPUs.
    Jobs that need no GPU never appear: any worker takes them (`workers` counts those)."""
    largest: dict[str, int] = {}
    for w in redis.workers:
        if w["state"] == "lost":
            continue
        for name in {keys.split_rq_queue(str(q))[0] for q in w["queues"]}:
            largest[name] = max(largest.get(name, 0), len(w["gpus"]))
    waiting: dict[tuple[str, int], int] = {}
    for rq_name, count in redis.waiting.items():
        base, _priority, gpus = keys.split_rq_queue(rq_name)
        if count and gpus > largest.get(base, 0):
            waiting[base, gpus] = waiting.get((base, gpus), 0) + count
    out: dict[str, list[Row]] = {}
    for (base, gpus), count in sorted(waiting.items()):
        out.setdefault(base, []).append(
            {"gpus": gpus, "jobs": count, "largest_slot": largest.get(base)}
        )
    return out


def _worker_out(w: Row, tasks: dict[str, Row], now: dt.datetime) -> Row:
    task = tasks.get(w["task"]) if w["task"] else None
    return {
        **w,
        "task_name": f"{task['project']}/{task['name']}" if task else None,
        "task_status": task["status"] if task else None,
        "task_age_s": _age(_utc(w["task_started"]), now),
        "heartbeat_age_s": _age(_utc(w["heartbeat"]), now),
    }


# -- helpers ----------------------------------------------------------------------------------


def _base_queue(rq_name: str) -> str:
    """`gpu@2:high` -> `gpu` (retrain queue names never contain `@` or `:`)."""
    return keys.split_rq_queue(rq_name)[0]


def _utc(value: Any) -> dt.datetime | None:
    """A UTC datetime from PostgreSQL's datetimes, SQLite's text or an ISO string."""
    when: dt.datetime
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str) and value:
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def _iso(value: Any) -> str | None:
    """A time as every command's JSON writes one (`...T12:00:00.5Z`, as pydantic does)."""
    when = _utc(value)
    return when.isoformat().replace("+00:00", "Z") if when is not None else None


def _age(when: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((now - when).total_seconds(), 3) if when is not None else None


def _bind_time(conn: Any, when: dt.datetime) -> Any:
    """A time to compare with a stored one: SQLite keeps UTC as `YYYY-MM-DD HH:MM:SS.ffffff`
    text (SQLAlchemy's format), which compares correctly as text; PostgreSQL takes a datetime."""
    when = when.astimezone(dt.timezone.utc)
    if isinstance(conn, sqlite3.Connection):
        return when.strftime("%Y-%m-%d %H:%M:%S.%f")
    return when


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        return None


def _json(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _json_list_of(value: Any) -> list[Any]:
    """A JSON list column: a list from PostgreSQL, text from SQLite, or NULL."""
    parsed = _json(value)
    return parsed if isinstance(parsed, list) else []


def _json_list(value: str | None) -> list[Any]:
    """A list a worker advertises as JSON text (anyone with the workers' Redis access writes
    it): one holding `Infinity`, `NaN` or a number too large for a float (which Python's
    reader takes, and `--json` would print as no JSON reader takes it) is no list."""
    if not value:
        return []
    try:
        parsed = json.loads(value, parse_constant=_no_json, parse_float=_finite_float)
    except (TypeError, ValueError, RecursionError):
        return []
    return parsed if isinstance(parsed, list) else []


def _no_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large")
    return number


def _redact(url: str | None) -> str | None:
    if url is None:
        return None
    from orchestrator.redact import redact_url

    return redact_url(url)
