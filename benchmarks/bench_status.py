"""`retrain status --json` on a busy installation, as a whole process.

Target (issue 6): <= 0.5 s with 100,000 finished tasks, 1,000 queued (100 of them held, with
their 900 jobs in RQ), 40 running, 50 workers (40 busy, 8 idle, 2 lost) advertised in Redis,
20,000 events (the scheduler 5 behind) and 5,000 firings, on PostgreSQL and on SQLite. Each
figure is the median of several runs of the real command, printed next to the floor measured
in the same run: `retrain --help` (interpreter, CLI import, no database, no Redis).
Uses RETRAIN_TEST_POSTGRES_URL and RETRAIN_TEST_REDIS_URL (flushed), defaulting to this
machine's services.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.bench_scheduler import environment
from benchmarks.bench_tasks import REDIS, median_ms

FINISHED = 100_000
QUEUED = 1_000
HELD = 100
RUNNING = 40
WORKERS = 50
LOST = 2
EVENTS = 20_000
FIRINGS = 5_000
BEHIND = 5
QUEUES = ("gpu", "gpu-large", "cpu", "eval")
TARGET_S = 0.5


TASK_COLUMNS = (
    "id",
    "project_id",
    "name",
    "type",
    "status",
    "comment",
    "queue",
    "priority",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "worker",
    "exit_code",
    "metrics",
    "spec",
    "parameters",
    "inputs",
    "resolved_inputs",
    "held",
    "coalesced_events",
    "environment",
)
EVENT_COLUMNS = ("kind", "entity_id", "project", "name", "tags", "payload", "created_at")
FIRING_COLUMNS = (
    "trigger_name",
    "trigger_revision",
    "event_seq",
    "entity_id",
    "decision",
    "reason",
    "task_id",
    "created_at",
)


class Loader:
    """Rows straight through the driver: COPY on PostgreSQL, executemany on SQLite (an ORM
    insert of 100,000 tasks takes ~20 s; this takes a few)."""

    def __init__(self, database_url: str) -> None:
        scheme, _, rest = database_url.partition("://")
        self.sqlite = scheme == "sqlite"
        if self.sqlite:
            import sqlite3

            self.conn: Any = sqlite3.connect(rest[1:])
        else:
            import psycopg2

            self.conn = psycopg2.connect(f"postgresql://{rest}")

    def time(self, when: dt.datetime | None) -> Any:
        """SQLite holds UTC as SQLAlchemy writes it: `YYYY-MM-DD HH:MM:SS.ffffff` text."""
        if when is None or not self.sqlite:
            return when
        return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        names = ", ".join(columns)
        if self.sqlite:
            marks = ", ".join("?" * len(columns))
            self.conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
            return
        from psycopg2.extras import execute_values

        with self.conn.cursor() as cursor:
            execute_values(cursor, f"INSERT INTO {table} ({names}) VALUES %s", rows, page_size=5000)

    def finish(self) -> None:
        self.conn.cursor().execute("ANALYZE")  # planner statistics, as a live database has
        self.conn.commit()
        self.conn.close()


def seed(database_url: str) -> list[str]:
    """Create the schema (the store migrates), then fill it in bulk; returns the ids of the
    running tasks, for the workers to be busy with."""
    from orchestrator.store import Store

    Store(database_url).dispose()
    rng = random.Random(6)
    now = dt.datetime.now(dt.timezone.utc)
    load = Loader(database_url)
    spec = json.dumps({"repo": "https://example.invalid/x.git", "entry": {"script": "t.py"}})
    tasks: list[tuple[Any, ...]] = []

    def add(
        status: str,
        queued_ago_s: float,
        started_ago_s: float | None = None,
        finished_ago_s: float | None = None,
        held: bool = False,
    ) -> None:
        def at(seconds: float | None) -> Any:
            return None if seconds is None else load.time(now - dt.timedelta(seconds=seconds))

        params = json.dumps({"General/dataset_id": uuid.uuid4().hex})
        tasks.append(
            (
                uuid.uuid4().hex,
                1,
                "train",
                "training",
                status,
                "",
                rng.choice(QUEUES),
                rng.choice(("high", "normal", "normal", "low")),
                at(queued_ago_s),
                at(queued_ago_s),
                at(started_ago_s),
                at(finished_ago_s),
                "box" if started_ago_s is not None else None,
                0 if finished_ago_s is not None else None,
                "{}",
                spec,
                params,
                "{}",
                "{}",
                held,
                "[]",
                "{}",
            )
        )

    for _ in range(FINISHED):
        ago = rng.uniform(0, 60 * 86400)  # two months of history
        status = rng.choices(("completed", "failed", "aborted"), (90, 7, 3))[0]
        add(status, ago + 3600, ago + 1800, ago)
    for i in range(QUEUED):
        add("queued", rng.uniform(0, 6 * 3600), held=i < HELD)
    for _ in range(RUNNING):
        add("running", rng.uniform(3600, 7200), 1800)
    running = [t[0] for t in tasks if t[4] == "running"]
    queued = [(t[0], t[6], t[7]) for t in tasks if t[4] == "queued" and not t[19]]

    events = [
        (
            "dataset.version.tagged",
            uuid.uuid4().hex,
            "vision",
            f"set-{i % 100}",
            '["Production"]',
            json.dumps({"version": f"1.0.{i}", "status": "final"}),
            load.time(now - dt.timedelta(seconds=EVENTS - i)),
        )
        for i in range(EVENTS)
    ]
    firings = [
        (
            f"trigger-{i % 20}",
            "r1",
            i + 1,
            events[i][1],
            "fired" if i % 3 else "skipped",
            "" if i % 3 else "cooldown: 1h not over",
            tasks[i][0] if i % 3 else None,
            events[i][6],
        )
        for i in range(FIRINGS)
    ]
    load.insert("projects", ("id", "path", "created_at"), [(1, "vision/occupancy", load.time(now))])
    load.insert("tasks", TASK_COLUMNS, tasks)
    load.insert("events", EVENT_COLUMNS, events)
    load.insert("trigger_firings", FIRING_COLUMNS, firings)
    load.insert(
        "scheduler_state",
        (
            "name",
            "cursor",
            "leader",
            "heartbeat_at",
            "last_poll_at",
            "config_path",
            "config_loaded_at",
        ),
        [
            (
                "main",
                EVENTS - BEHIND,
                "sched:1:abcd",
                load.time(now),
                load.time(now),
                "/etc/retrain/triggers.yaml",
                load.time(now),
            )
        ],
    )
    load.finish()
    enqueue(queued)
    return running


def enqueue(queued: list[tuple[str, str, str]]) -> None:
    """The queued tasks' jobs, through the adapter every command uses."""
    import redis

    from orchestrator.queue.adapter import QueueAdapter

    client = redis.Redis.from_url(REDIS)
    adapter = QueueAdapter(client)
    for task_id, queue, priority in queued:
        adapter.enqueue(
            task_id,
            {"project": "vision/occupancy", "name": "train"},
            queue=queue,
            priority=priority,
            timeout_s=3600,
        )
    client.close()


def advertise(running: list[str]) -> None:
    """Worker hashes and the workers' sorted set as `orchestrator.queue.keys` documents them."""
    import redis

    from orchestrator.queue import keys

    client = redis.Redis.from_url(REDIS)
    now = dt.datetime.now(dt.timezone.utc)
    pipe = client.pipeline(transaction=False)
    for i in range(WORKERS):
        host, name = f"gpu-box-{i // 8}", f"gpu-box-{i // 8}-gpu{i % 8}"
        pipe.zadd(keys.WORKERS, {name: now.timestamp() - (7200 if i < LOST else 5)})
        if i < LOST:
            continue  # lost: the hash expired
        busy = i - LOST < len(running)
        gpu = {"index": i % 8, "uuid": f"GPU-{i}", "name": "NVIDIA H100", "memory_mib": 81559}
        pipe.hset(
            keys.worker_key(name),
            mapping={
                "name": name,
                "host": host,
                "pid": str(1000 + i),
                "queues": json.dumps(keys.rq_queues_in_order(QUEUES[i % len(QUEUES)])),
                "gpus": json.dumps([gpu]),
                "state": "busy" if busy else "idle",
                "task": running[i - LOST] if busy else "",
                "task_started": (now - dt.timedelta(minutes=30)).isoformat() if busy else "",
                "started": (now - dt.timedelta(days=1)).isoformat(),
                "heartbeat": now.isoformat(),
            },
        )
    pipe.set(keys.SCHEDULER_LEASE, "sched:1:abcd", px=60_000)
    pipe.execute()
    client.close()


@contextmanager
def sqlite_environment(work: Path) -> Iterator[dict[str, str]]:
    import redis

    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    env = {
        "RETRAIN_HOME": str(work / "home"),
        "RETRAIN_REDIS_URL": REDIS,
        "RETRAIN_DATABASE_URL": f"sqlite:///{work / 'home' / 'retrain.db'}",
    }
    try:
        yield env
    finally:
        client.flushdb()
        client.close()


def measure(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    import subprocess

    retrain = str(Path(sys.executable).with_name("retrain"))
    full = {**os.environ, **env}
    out = subprocess.run(
        [retrain, "status", "--json"], env=full, check=True, capture_output=True, text=True
    )
    data = json.loads(out.stdout)  # warm the OS caches; check what it saw
    return median_ms([retrain, "status", "--json"], full) / 1000, data


def check(data: dict[str, Any]) -> None:
    queued = sum(q["queued"] for q in data["queues"])
    waiting = sum(q["redis_waiting"] for q in data["queues"])
    assert queued == QUEUED and waiting == QUEUED - HELD, (queued, waiting)
    assert len(data["workers"]) == WORKERS and data["scheduler"]["events_behind"] == BEHIND


def main() -> bool:
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="retrain-bench-status-"))
    results: dict[str, tuple[float, float]] = {}
    try:
        for backend in ("PostgreSQL", "SQLite"):
            place = work / backend
            place.mkdir()
            opened = environment(place) if backend == "PostgreSQL" else sqlite_environment(place)
            with opened as env:
                start = time.perf_counter()
                advertise(seed(env["RETRAIN_DATABASE_URL"]))
                seeded = time.perf_counter() - start
                elapsed, data = measure(env)
                check(data)
                results[backend] = (elapsed, seeded)
        retrain = str(Path(sys.executable).with_name("retrain"))
        subprocess.run([retrain, "--help"], check=True, stdout=subprocess.DEVNULL)
        floor = median_ms([retrain, "--help"], dict(os.environ)) / 1000
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = all(elapsed <= TARGET_S for elapsed, _ in results.values())
    print(
        f"status: `retrain status --json` as a process; {FINISHED:,} finished tasks, "
        f"{QUEUED:,} queued, {WORKERS} workers, {EVENTS:,} events, {FIRINGS:,} firings"
    )
    for backend, (elapsed, seeded) in results.items():
        print(
            f"  {backend:<10}  {elapsed:6.3f} s median  (target <= {TARGET_S}; "
            f"seeded in {seeded:.1f} s)"
        )
    print(f"  floor: `retrain --help` {floor:.3f} s (interpreter + CLI import, no I/O)")
    print(f"  {'OK' if ok else 'MISSED'}")
    return ok
