"""`retrain status` against real stores (SQLite and PostgreSQL) and real Redis: the figures in
`--json`, what the plain output names, and how it behaves when Redis or the database is gone.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.queue import keys
from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.store.models import Event, Project, SchedulerState, Task, TriggerFiring, utcnow
from tests.conftest import CLI
from tests.tasks.conftest import git_repo, machine_redis_url  # noqa: F401  (fixture)
from tests.triggers.conftest import Loop, loop, retrain  # noqa: F401  (fixture)


def ago(**delta: float) -> dt.datetime:
    return utcnow() - dt.timedelta(**delta)  # now, when the test seeds (not at import)


@dataclass
class Seeded:
    running: str
    firing_task: str


@pytest.fixture
def machine_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    yield client
    client.flushdb()
    client.close()


def dead_redis_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{probe.getsockname()[1]}/0"


def task(project: Project, status: str, queue: str, **fields: Any) -> Task:
    return Task(
        project_id=project.id,
        name=fields.pop("name", "train"),
        type="training",
        status=status,
        queue=queue,
        spec={},
        **fields,
    )


def seed(runtime: Runtime) -> tuple[str, str]:
    """Tasks of every status in queues `gpu` and `cpu`, an event log the scheduler is two
    events behind on, and two firings. Returns (the running task, the fired task)."""
    with runtime.store.session() as session:
        project = Project(path="vision/occupancy")
        session.add(project)
        session.flush()
        rows = [
            # gpu: 3 queued (one held), 1 running, failed 1 h and 2 days ago, finished ones
            task(project, "queued", "gpu", queued_at=ago(minutes=30)),
            task(project, "queued", "gpu", queued_at=ago(minutes=5)),
            task(project, "queued", "gpu", queued_at=ago(hours=2), held=True),
            task(project, "running", "gpu", queued_at=ago(hours=3), started_at=ago(minutes=20)),
            task(project, "failed", "gpu", queued_at=ago(hours=2), finished_at=ago(hours=1)),
            task(project, "failed", "gpu", queued_at=ago(days=3), finished_at=ago(days=2)),
            task(project, "completed", "gpu", queued_at=ago(hours=5), finished_at=ago(hours=4)),
            task(project, "aborted", "gpu", queued_at=ago(hours=5), finished_at=ago(hours=4)),
            task(project, "draft", "gpu"),
            # cpu: 1 queued, 2 failed recently
            task(project, "queued", "cpu", queued_at=ago(minutes=1)),
            task(project, "failed", "cpu", queued_at=ago(hours=3), finished_at=ago(minutes=10)),
            task(project, "failed", "cpu", queued_at=ago(hours=3), finished_at=ago(minutes=9)),
            task(project, "completed", "cpu", queued_at=ago(hours=1), finished_at=ago(hours=1)),
        ]
        session.add_all(rows)
        session.flush()
        running, fired = rows[3].id, rows[0].id
        events = [
            Event(
                kind="dataset.version.tagged",
                entity_id="a" * 32,
                project="vision",
                name="occupancy",
                tags=["Production"],
                payload={"version": "1.2.0", "status": "final"},
                created_at=ago(minutes=31),
            ),
            Event(
                kind="dataset.version.tagged",
                entity_id="b" * 32,
                project="vision",
                name="occupancy",
                tags=["Production"],
                payload={"version": "1.3.0", "status": "final"},
                created_at=ago(minutes=4),
            ),
            Event(
                kind="task.completed",
                entity_id="c" * 32,
                project="vision",
                name="train",
                payload={"status": "completed"},
                created_at=ago(minutes=3),
            ),
        ]
        session.add_all(events)
        session.flush()
        session.add_all(
            [
                TriggerFiring(
                    trigger_name="retrain-on-production",
                    trigger_revision="r1",
                    event_seq=events[0].seq,
                    entity_id="a" * 32,
                    decision="fired",
                    task_id=fired,
                    created_at=ago(minutes=30),
                ),
                TriggerFiring(
                    trigger_name="retrain-on-production",
                    trigger_revision="r1",
                    event_seq=events[1].seq,
                    entity_id="b" * 32,
                    decision="skipped",
                    reason="cooldown: 30m not over",
                    created_at=ago(minutes=4),
                ),
            ]
        )
        session.add(
            SchedulerState(
                name="main",
                cursor=events[0].seq,
                leader="box:1:abcd",
                heartbeat_at=ago(seconds=2),
                last_poll_at=ago(minutes=30),
                config_path="/etc/retrain/triggers.yaml",
                config_loaded_at=ago(hours=1),
                config_error=None,
            )
        )
    return running, fired


def advertise(client: redis.Redis, running: str) -> None:
    """Worker advertisements as `keys.worker_key` documents them: two alive, one lost an hour
    ago (its hash expired), one lost two days ago (left out)."""
    gpus = [
        {"index": 0, "uuid": "GPU-0", "name": "NVIDIA A100", "memory_mib": 81920},
        {"index": 1, "uuid": "GPU-1", "name": "NVIDIA A100", "memory_mib": 81920},
    ]
    beat = ago(seconds=5)
    for name, host, state, task_id, slot in [
        ("box1-gpu0+1", "box1", "busy", running, gpus),
        ("box2-cpu", "box2", "idle", "", []),
    ]:
        client.hset(
            keys.worker_key(name),
            mapping={
                "name": name,
                "host": host,
                "pid": "4242",
                "queues": json.dumps(keys.rq_queues_in_order("gpu" if slot else "cpu")),
                "gpus": json.dumps(slot),
                "state": state,
                "task": task_id,
                "task_started": ago(minutes=20).isoformat() if task_id else "",
                "started": ago(days=1).isoformat(),
                "heartbeat": beat.isoformat(),
            },
        )
        client.zadd(keys.WORKERS, {name: beat.timestamp()})
    client.zadd(
        keys.WORKERS, {"box3-gpu0": ago(hours=1).timestamp(), "box9-gpu0": ago(days=2).timestamp()}
    )
    client.set(keys.SCHEDULER_LEASE, "box:1:abcd", px=8000)


def rq_jobs(runtime: Runtime, queue: str, priority: str, count: int) -> None:
    for i in range(count):
        runtime.queues.enqueue(
            f"{queue}{priority}{i}".ljust(32, "0"),
            {"project": "p"},
            queue=queue,
            priority=priority,
            timeout_s=60,
        )


@pytest.fixture
def seeded(
    database_url: str, machine_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Seeded]:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    runtime = Runtime()
    running, fired = seed(runtime)
    advertise(machine_redis, running)
    # RQ holds 2 jobs for gpu (one high) and none for cpu: cpu's queued task lacks its job.
    rq_jobs(runtime, "gpu", "normal", 1)
    rq_jobs(runtime, "gpu", "high", 1)
    runtime.close()
    yield Seeded(running, fired)


def test_figures(cli: CLI, seeded: Seeded) -> None:
    data: Any = cli.json("status")
    assert data["redis"] == {"url": data["redis"]["url"], "reachable": True, "error": None}

    s = data["scheduler"]
    assert s["alive"] and s["leader"] == "box:1:abcd" and 0 < s["lease_ttl_s"] <= 8
    assert s["recorded_leader"] == "box:1:abcd"
    assert s["newest_event"] == s["cursor"] + 2 and s["events_behind"] == 2
    assert 3 * 60 < s["oldest_unprocessed_age_s"] < 4 * 60 + 60  # the event of 4 min ago
    assert s["config"] == {
        "path": "/etc/retrain/triggers.yaml",
        "loaded_at": s["config"]["loaded_at"],
        "error": None,
        "problems": [],
    }
    assert s["firing"] is True and s["not_firing_reason"] is None
    assert s["steps"] == []  # this seeded row has no steps recorded

    queues = {q["name"]: q for q in data["queues"]}
    assert sorted(queues) == ["cpu", "gpu"]
    gpu, cpu = queues["gpu"], queues["cpu"]
    assert (gpu["queued"], gpu["held"], gpu["running"], gpu["failed_24h"]) == (3, 1, 1, 1)
    assert (cpu["queued"], cpu["held"], cpu["running"], cpu["failed_24h"]) == (1, 0, 0, 2)
    assert 2 * 3600 <= gpu["oldest_queued_age_s"] < 3 * 3600  # the held one, 2 h ago
    assert gpu["redis"] == {"high": 1, "normal": 1, "low": 0} and gpu["redis_waiting"] == 2
    assert cpu["redis"] == {"high": 0, "normal": 0, "low": 0} and cpu["redis_waiting"] == 0
    assert gpu["workers"] == 1 and cpu["workers"] == 1

    workers = {w["name"]: w for w in data["workers"]}
    assert sorted(workers) == ["box1-gpu0+1", "box2-cpu", "box3-gpu0"]
    assert data["workers_lost_hidden"] == 1
    busy = workers["box1-gpu0+1"]
    assert busy["state"] == "busy" and busy["host"] == "box1" and busy["pid"] == 4242
    assert busy["task"] == seeded.running and busy["task_name"] == "vision/occupancy/train"
    assert busy["task_status"] == "running" and 19 * 60 < busy["task_age_s"] < 30 * 60
    assert [g["index"] for g in busy["gpus"]] == [0, 1]
    assert busy["gpus"][0] == {
        "index": 0,
        "uuid": "GPU-0",
        "name": "NVIDIA A100",
        "memory_mib": 81920,
    }
    assert workers["box2-cpu"]["state"] == "idle" and workers["box2-cpu"]["task"] is None
    lost = workers["box3-gpu0"]
    assert lost["state"] == "lost" and 3600 <= lost["heartbeat_age_s"] < 2 * 3600

    fired, skipped = data["firings"][1], data["firings"][0]
    assert fired["decision"] == "fired" and fired["task"] == seeded.firing_task
    assert fired["task_status"] == "queued"
    assert fired["event"]["kind"] == "dataset.version.tagged"
    assert (
        fired["event"]["project"],
        fired["event"]["name"],
        fired["event"]["version"],
        fired["event"]["tags"],
    ) == ("vision", "occupancy", "1.2.0", ["Production"])
    assert skipped["decision"] == "skipped" and skipped["reason"] == "cooldown: 30m not over"
    assert skipped["task"] is None and skipped["event"]["version"] == "1.3.0"


def test_plain_output_names_the_lost_worker_and_the_queue_figures(cli: CLI, seeded: Seeded) -> None:
    out = cli("status").out
    assert "alive" in out and "2 behind" in out
    [gpu] = [line for line in out.splitlines() if line.startswith("gpu ")]
    assert gpu.split()[:5] == ["gpu", "3", "1", "1", "1"]
    [cpu] = [line for line in out.splitlines() if line.startswith("cpu ")]
    assert cpu.split()[:5] == ["cpu", "1", "-", "0", "2"]
    assert "cpu: 1 queued and not held in the store, 0 job(s) waiting in Redis" in out
    [lost] = [line for line in out.splitlines() if "box3-gpu0" in line]
    assert "lost" in lost and "last seen 1h" in lost
    assert "box9-gpu0" not in out and "1 lost worker(s) silent for over 24 h" in out
    [busy] = [line for line in out.splitlines() if "box1-gpu0+1" in line]
    assert seeded.running in busy and "2x NVIDIA A100 80 GiB (0, 1)" in busy
    assert "cooldown: 30m not over" in out and "occupancy 1.2.0 [Production] tagged" in out


SCHEMA: dict[str, Any] = {
    "time": str,
    "database": str,
    "workers_lost_hidden": int,
    "workers_not_read": int,
    "workers_ahead": int,
    "redis": {"url": (str, None), "reachable": bool, "error": (str, None)},
    "scheduler": {
        "alive": bool,
        "leader": (str, None),
        "lease_ttl_s": (float, None),
        "recorded_leader": (str, None),
        "heartbeat_at": (str, None),
        "heartbeat_age_s": (float, None),
        "last_poll_at": (str, None),
        "cursor": (int, None),
        "newest_event": int,
        "events_behind": (int, None),
        "oldest_unprocessed_at": (str, None),
        "oldest_unprocessed_age_s": (float, None),
        "firing": bool,
        "not_firing_reason": (str, None),
        "config": {
            "path": (str, None),
            "loaded_at": (str, None),
            "error": (str, None),
            "problems": [str],
        },
        "steps": [
            {
                "name": str,
                "ok": bool,
                "last_ok_at": (str, None),
                "last_error": (str, None),
                "last_error_at": (str, None),
                "failing_since": (str, None),
                "failing_for_s": (float, None),
                "failures": int,
                "budget_s": float,
                "over_budget": bool,
            }
        ],
    },
    "queues": [
        {
            "name": str,
            "queued": int,
            "held": int,
            "running": int,
            "failed_24h": int,
            "oldest_queued_at": (str, None),
            "oldest_queued_age_s": (float, None),
            "redis": ({"high": int, "normal": int, "low": int}, None),
            "redis_waiting": (int, None),
            "workers": (int, None),
            "no_slot": ([{"gpus": int, "jobs": int, "largest_slot": (int, None)}], None),
        }
    ],
    "workers": (
        [
            {
                "name": str,
                "host": (str, None),
                "pid": (int, None),
                "queues": list,
                "gpus": [
                    {
                        "index": (int, None),
                        "uuid": (str, None),
                        "name": (str, None),
                        "memory_mib": (int, None),
                    }
                ],
                "state": str,
                "task": (str, None),
                "task_name": (str, None),
                "task_status": (str, None),
                "task_started": (str, None),
                "task_age_s": (float, None),
                "started": (str, None),
                "heartbeat": (str, None),
                "heartbeat_age_s": (float, None),
                "sandbox": (str, None),
                "reports": (str, None),
                "metric": ({"name": str, "step": (int, float, None), "value": (int, float)}, None),
            }
        ],
        None,
    ),
    "firings": [
        {
            "time": str,
            "trigger": str,
            "decision": str,
            "reason": str,
            "event": {
                "seq": int,
                "kind": str,
                "project": str,
                "name": str,
                "version": (str, None),
                "tags": list,
            },
            "task": (str, None),
            "task_status": (str, None),
        }
    ],
    "reports": {
        "refused": (int, None),
        "last_refused": (dict, None),
        "scheduler_signed": (bool, None),
        "unsigned_workers": [str],
    },
    "waiting": [
        {
            "trigger": str,
            "reason": str,
            "since": (str, None),
            "count": int,
            "events": [
                {
                    "seq": int,
                    "kind": str,
                    "entity": str,
                    "project": str,
                    "name": str,
                    "version": (str, None),
                }
            ],
        }
    ],
}


def conforms(value: Any, schema: Any, where: str = "$") -> None:
    """`schema`: a type, a dict (exactly these keys), a one-item list (every item), or a
    tuple of alternatives (None for null)."""
    if isinstance(schema, tuple):
        errors = []
        for option in schema:
            if option is None:
                if value is None:
                    return
                continue
            try:
                conforms(value, option, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: {value!r} matches none of {schema}: {errors}")
    if isinstance(schema, dict):
        assert isinstance(value, dict) and sorted(value) == sorted(schema), (where, value)
        for key, sub in schema.items():
            conforms(value[key], sub, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), (where, value)
        for i, item in enumerate(value):
            conforms(item, schema[0], f"{where}[{i}]")
    elif schema is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (where, value)
    else:
        assert isinstance(value, schema) and not (schema is int and isinstance(value, bool)), (
            where,
            value,
        )


def test_json_schema(cli: CLI, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    full: Any = cli.json("status")
    conforms(full, SCHEMA)
    assert full["queues"] and full["workers"] and full["firings"]  # every part was checked
    monkeypatch.setenv("RETRAIN_REDIS_URL", dead_redis_url())
    conforms(cli.json("status"), SCHEMA)


def test_without_redis_the_store_part_is_shown(
    cli: CLI, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAIN_REDIS_URL", dead_redis_url())
    data: Any = cli.json("status")
    assert data["redis"]["reachable"] is False and data["redis"]["error"]
    assert data["workers"] is None and data["scheduler"]["leader"] is None
    gpu = {q["name"]: q for q in data["queues"]}["gpu"]
    assert (gpu["queued"], gpu["held"], gpu["running"], gpu["failed_24h"]) == (3, 1, 1, 1)
    assert gpu["redis"] is None and gpu["workers"] is None
    assert data["scheduler"]["events_behind"] == 2 and len(data["firings"]) == 2
    out = cli("status").out  # exit code 0: the problem is shown, not raised
    assert "unreachable" in out and "showing the store only" in out
    assert "Redis is unreachable" in out


def test_watch_prints_a_snapshot_per_refresh_until_ctrl_c(seeded: Seeded) -> None:
    """Not on a terminal, `--watch --json` writes one JSON object per line; Ctrl-C ends it
    with exit code 0 and no traceback."""
    proc = subprocess.Popen(
        retrain("status", "--watch", "--json", "--interval", "0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        snapshots = [json.loads(proc.stdout.readline()) for _ in range(2)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert snapshots[0]["time"] < snapshots[1]["time"]
    for snapshot in snapshots:
        conforms(snapshot, SCHEMA)
        assert {q["name"]: q["queued"] for q in snapshot["queues"]} == {"cpu": 1, "gpu": 3}


def test_an_unreachable_database_is_one_line_and_exit_2(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RETRAIN_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/none")
    result = cli("status", expect=2)
    assert result.err.startswith("retrain: error: ") and result.err.count("\n") == 1
    assert result.out == ""


def test_a_fresh_home_without_redis(cli: CLI, retrain_home: Path) -> None:
    """No database yet (the full store creates it) and no embedded Redis running (status
    does not start one)."""
    data: Any = cli.json("status")
    assert data["queues"] == [] and data["firings"] == [] and data["workers"] is None
    assert data["scheduler"]["cursor"] is None and data["scheduler"]["alive"] is False
    assert data["redis"]["reachable"] is False and "embedded" in data["redis"]["error"]
    assert not (retrain_home / "redis.json").exists()
    out = cli("status").out
    assert "never started" in out and "no queue has been used yet" in out


def test_after_a_real_scheduler_tick(loop: Loop, database_url: str) -> None:  # noqa: F811
    """A firing made by the scheduler itself: the event's version and tags, the queued task,
    the heartbeat and lease it recorded, and the lag its own firing leaves until next poll."""
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    version = loop.version(runtime)
    runtime.datasets.tag(version, ["Production"])
    assert scheduler.tick().fired == 1
    [job] = loop.jobs()
    # The run's own events (task.created, task.queued) come after the cursor: the daemon
    # polls again at once, chained triggers may react to them.
    behind: Any = loop.cli.json("status")
    assert behind["scheduler"]["events_behind"] == 2
    assert behind["scheduler"]["oldest_unprocessed_age_s"] >= 0
    scheduler.tick()
    data: Any = loop.cli.json("status")
    conforms(data, SCHEMA)  # with the steps a real scheduler recorded
    s = data["scheduler"]
    assert s["firing"] and s["not_firing_reason"] is None
    assert [step["name"] for step in s["steps"]] == [
        "lease", "reload", "ingest", "poll", "release", "reconcile", "lost_workers",
        "schedules", "heartbeat"]
    assert all(step["ok"] for step in s["steps"])
    assert s["alive"] and s["leader"] == scheduler.lease.holder == s["recorded_leader"]
    assert s["events_behind"] == 0 and s["oldest_unprocessed_at"] is None
    assert s["config"]["path"] == str(loop.triggers) and s["config"]["error"] is None
    [firing] = data["firings"]
    assert firing["trigger"] == "retrain-on-production-data" and firing["task"] == job
    assert firing["task_status"] == "queued" and firing["event"]["version"] == "1.0.0"
    assert firing["event"]["tags"] == ["Production"]
    assert firing["event"]["project"] == "dataset_blogpost"
    [gpu] = [q for q in data["queues"] if q["name"] == "gpu"]
    assert gpu["queued"] == 1 and gpu["redis_waiting"] == 1 and gpu["workers"] == 0
    runtime.close()


def test_names_it_shares_with_other_modules_agree() -> None:
    """status.py repeats a few names to stay import-light; they must not drift."""
    from rq import Queue

    from orchestrator import status
    from orchestrator.queue.connection import STATE_FILE
    from orchestrator.scheduler.engine import STATE

    assert Queue.redis_queue_namespace_prefix == status.RQ_QUEUE_PREFIX
    assert Queue.redis_queues_keys == status.RQ_QUEUES
    assert (STATE_FILE, STATE) == (status.REDIS_STATE_FILE, status.SCHEDULER_STATE)


def test_the_plain_redis_client_reads_what_redis_py_reads(machine_redis: redis.Redis) -> None:
    """`status` reads Redis over a socket of its own (no redis-py import): the view is the one
    redis-py gives, on the same data, including fields a stranger wrote; an unreachable Redis
    and a wrong password are one line, and a URL it cannot serve goes to redis-py."""
    from orchestrator.queue import keys
    from orchestrator.queue.plain import PlainRedis
    from orchestrator.status import RQ_QUEUES, _read_redis, read_redis

    client = machine_redis
    url = machine_redis_url()
    now = dt.datetime.now(dt.timezone.utc)
    client.set(keys.SCHEDULER_LEASE, "host-1:123", px=60_000)
    client.sadd(RQ_QUEUES, "rq:queue:gpu", "rq:queue:cpu", "not-a-queue")
    client.rpush("rq:queue:gpu", "a", "b", "c")
    client.zadd(keys.WORKERS, {"w1": now.timestamp(), "w2": now.timestamp() - 5, "odd": 1.5})
    client.hset(
        keys.worker_key("w1"),
        mapping={"queues": "gpu", "task": "t1", "state": "busy", "gpus": "0,1", "é": "ü"},
    )
    client.xadd(keys.metrics_stream("t1"), {"p": json.dumps({"loss": [[1, 2], [0.5, 0.25]]})})
    client.xadd(keys.metrics_stream("t1"), {"p": "not json"})
    plain = PlainRedis.of(url)
    assert plain is not None
    try:
        lean = _read_redis(plain, url, now)
    finally:
        plain.close()
    full = _read_redis(client, url, now)
    for view in (lean, full):  # the lease's time left moves between the two reads
        assert view.lease_ttl_s is not None and 0 < view.lease_ttl_s <= 60
        view.lease_ttl_s = None
    assert lean == full
    assert lean.leader == "host-1:123" and lean.waiting == {"gpu": 3, "cpu": 0}
    assert [w["metric"] for w in lean.workers if w["name"] == "w1"] == [
        {"name": "loss", "step": 2, "value": 0.25}
    ]
    again = read_redis(url, now)
    again.lease_ttl_s = None
    assert again == full
    dead = read_redis(dead_redis_url(), now)
    assert dead.error and "\n" not in dead.error
    wrong = read_redis(url.replace("redis://", "redis://nobody:wrong@", 1), now)
    assert wrong.error and ("WRONGPASS" in wrong.error or "AUTH" in wrong.error)
    # New-user pass: credentials in the URL are judged as redis-py (the scheduler's and the
    # workers' client) judges them, so status says what they will meet. This Redis has no
    # password: its default user takes any (2-argument AUTH), an empty one means none, and
    # a user of its own it does not know is refused.
    import redis as redis_py

    for credentials in (":anything@", ":@", "bob@", "default:x@"):
        with_them = url.replace("redis://", f"redis://{credentials}", 1)
        try:
            redis_py.Redis.from_url(with_them).ping()
            expected = True
        except redis_py.RedisError:
            expected = False
        seen = read_redis(with_them, now)
        assert (seen.error is None) is expected, (credentials, expected, seen.error)
    assert PlainRedis.of("rediss://localhost:6380/0") is None
    assert PlainRedis.of("redis://localhost:6379/0?health_check_interval=5") is None
