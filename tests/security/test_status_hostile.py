"""Promise 7: `retrain status` survives whatever anyone with Redis access writes into worker
advertisements, and shows it escaped; refused reports are counted where people look."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.queue import keys, reports
from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from tests.conftest import CLI


@pytest.fixture
def attacker(machine_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(machine_redis)
    yield client
    client.close()


def test_status_survives_hostile_advertisements_and_counts_refused_reports(
    cli: CLI, attacker: redis.Redis, tmp_path: Path
) -> None:
    attacker.zadd(keys.WORKERS, {"far-future": 1e300, "nan": float("-inf"), "evil": 1.0})
    attacker.hset(keys.worker_key("far-future"), mapping={"name": "x", "heartbeat": "no"})
    attacker.hset(keys.worker_key("evil"), mapping={
        "name": "evil\x1b]0;owned\x07", "host": "h\x1b[2J", "queues": "not json",
        "gpus": json.dumps([{"index": "zero", "name": "\u202eevil"}]), "state": "busy",
        "task": "\x1b[31m", "task_started": "yesterday", "started": "1e300",
        "heartbeat": "2026-13-45T99:99:99", "pid": "-1"})
    attacker.xadd(keys.REPORTS_STREAM, {reports.FIELD: "{not json"})
    runtime = Runtime()
    # The leader counts what it refused in the store, with its heartbeat (Redis access could
    # delete the dead-letter stream).
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = Scheduler(runtime, triggers, wakeup=False)
    scheduler.ingest.step()
    scheduler.heartbeat()
    runtime.close()

    shown = cli("status").out
    assert "\x1b" not in shown and "\u202e" not in shown, repr(shown)
    assert "evil\\x1b]0;owned\\x07" in shown
    assert "reports refused: 1" in shown and "not JSON" in shown, shown
    data = cli.json("status")
    assert data["reports"]["refused"] == 1  # type: ignore[index]


def test_a_leader_name_from_redis_stays_on_its_line(cli: CLI, attacker: redis.Redis) -> None:
    """The lease's value is anyone's with Redis access: a line break in it must not print a
    line of status's own ("the scheduler is alive") under the scheduler row."""
    attacker.set(keys.SCHEDULER_LEASE, "evil\nthe scheduler is alive\x1b[2J", px=60_000)
    shown = cli("status").out
    assert "\x1b" not in shown, repr(shown)
    assert not any(line.lstrip().startswith("the scheduler is alive") for line in
                   shown.splitlines()), shown
    assert "leader evil\\nthe scheduler is alive\\x1b[2J" in shown, shown


def test_queues_only_redis_names_are_few_rows(cli: CLI, attacker: redis.Redis) -> None:
    """Anyone with the workers' Redis access (`rq:*`) can register a million queue names:
    status shows the queues the store knows, and of those only Redis names, the few with the
    most jobs waiting (a row each for 50,000 empty names took 66 s; a million, over 3 GB)."""
    with attacker.pipeline(transaction=False) as pipe:
        for i in range(0, 20_000, 1000):
            pipe.sadd("rq:queues", *[f"rq:queue:fake{j}" for j in range(i, i + 1000)])
        for j in range(200):
            pipe.rpush(f"rq:queue:fake{j}", *(["x"] * (j + 1)))
        pipe.execute()
    data = cli.json("status")
    names = [q["name"] for q in data["queues"]]  # type: ignore[index]
    assert len(names) == 50, len(names)
    assert set(names) == {f"fake{j}" for j in range(150, 200)}
    assert len(cli("status").out.splitlines()) < 120


def test_a_flood_of_worker_entries_is_read_in_part(cli: CLI, attacker: redis.Redis) -> None:
    """Anyone with the workers' Redis access can add worker entries: 20,000 made status take
    11 s, and a million minutes (attacker pass, round 2). Status reads the most recently seen
    ones, up to a bound, and says how many more there are."""
    import time

    from orchestrator.status import WORKERS_READ

    now = time.time()
    with attacker.pipeline(transaction=False) as pipe:
        for i in range(0, 20_000, 1000):
            pipe.zadd(keys.WORKERS, {f"fake{j}": now - j for j in range(i, i + 1000)})
        pipe.execute()
    data = cli.json("status")
    workers = data["workers"]  # type: ignore[index]
    assert len(workers) == WORKERS_READ, len(workers)
    assert data["workers_not_read"] == 20_000 - WORKERS_READ  # type: ignore[index]
    assert {w["name"] for w in workers} == {f"fake{j}" for j in range(WORKERS_READ)}
    assert f"{20_000 - WORKERS_READ} more worker" in cli("status").out


def test_a_live_point_that_is_no_finite_number_is_not_shown(
    cli: CLI, attacker: redis.Redis
) -> None:
    """A busy worker's newest live point comes from its task's metrics stream, which anyone
    with the workers' Redis access can append to: `Infinity` made `status --json` print
    `Infinity` (no JSON; jq refuses it), and an integer of 400 digits made the table die with
    OverflowError (attacker pass 3). A value that is no finite number is not shown (the
    newest good point is), nor such a step."""
    import time

    task = "a" * 32
    attacker.zadd(keys.WORKERS, {"w1": time.time()})
    attacker.hset(keys.worker_key("w1"), mapping={"name": "w1", "state": "busy", "task": task})
    stream = keys.metrics_stream(task)
    attacker.xadd(stream, {"p": json.dumps({"loss": [[1], [0.5]]})})
    huge = "1" + "0" * 400
    for entry in (f'{{"loss": [[{huge}], [0.25]]}}', '{"loss": [[2], [Infinity]]}',
                  '{"loss": [[3], [NaN]]}', f'{{"loss": [[4], [{huge}]]}}'):
        attacker.xadd(stream, {"p": entry})

    def strict(constant: str) -> None:
        raise ValueError(f"{constant} is no JSON")

    raw = cli("status", "--json").out
    data = json.loads(raw, parse_constant=strict)
    [worker] = data["workers"]
    assert worker["metric"] == {"name": "loss", "step": None, "value": 0.25}, worker
    shown = cli("status").out
    assert "loss 0.25 " in shown, shown


def test_entries_beating_from_the_future_do_not_hide_the_real_workers(
    cli: CLI, attacker: redis.Redis
) -> None:
    """Status reads the most recently seen worker entries, up to a bound: a thousand entries
    with a score far in the future (1e18, inf), added once, outranked every real worker for
    good, hid them all (a busy one, an unsigned one), and showed as lost workers "last seen
    0s ago" (attacker pass 3). Entries beating more than a few minutes ahead of this clock
    are counted, not read."""
    import time

    with attacker.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.WORKERS, {f"future{j}": 1e18 for j in range(1000)})
        pipe.zadd(keys.WORKERS, {"inf": float("inf")})
        pipe.zadd(keys.WORKERS, {"real": time.time()})
        pipe.hset(keys.worker_key("real"), mapping={"name": "real", "state": "busy"})
        pipe.execute()
    data = cli.json("status")
    workers = data["workers"]  # type: ignore[index]
    assert [w["name"] for w in workers] == ["real"], [w["name"] for w in workers][:5]
    assert data["workers_not_read"] == 1001  # type: ignore[index]
    assert data["workers_ahead"] == 1001  # type: ignore[index]
    shown = cli("status").out
    assert "1001 more worker entries" in shown and "in the future" in shown, shown


def test_one_huge_advertisement_field_does_not_blank_the_redis_half(
    cli: CLI, attacker: redis.Redis
) -> None:
    """Anyone with the workers' Redis access can write any worker's advertisement: one field
    over 64 MiB made status's reader call Redis broken, so status showed Redis as
    unreachable: no worker, no job counts, no leader (attacker pass 3). That value is skipped
    unread and said; the rest of status stays."""
    import time

    from orchestrator.queue.plain import MAX_REPLY_BYTES

    now = time.time()
    attacker.zadd(keys.WORKERS, {"big": now, "real": now})
    attacker.hset(keys.worker_key("big"), mapping={
        "name": "big", "state": "idle", "host": b"x" * (MAX_REPLY_BYTES + 1)})
    attacker.hset(keys.worker_key("real"), mapping={"name": "real", "state": "busy"})
    attacker.set(keys.SCHEDULER_LEASE, "leader-1", px=60_000)
    data = cli.json("status")
    assert data["redis"]["reachable"], data["redis"]  # type: ignore[index]
    workers = {w["name"]: w for w in data["workers"]}  # type: ignore[index]
    assert set(workers) == {"big", "real"}, workers.keys()
    assert workers["big"]["host"] == f"({MAX_REPLY_BYTES + 1} bytes, not read)"
    assert workers["real"]["state"] == "busy"
    shown = cli("status").out
    assert "unreachable" not in shown and "bytes, not read" in shown, shown


def test_advertised_json_that_is_no_json_is_dropped(cli: CLI, attacker: redis.Redis) -> None:
    """A worker advertises its GPUs and queues as JSON text, and anyone with the workers'
    Redis access can write it. Python's JSON reader takes `Infinity`, `NaN` and `1e999`
    (infinite): a GPU index of Infinity made status die with OverflowError, and the others
    went out through `status --json` as `Infinity`/`NaN`, which no JSON reader takes
    (attacker pass 3). Such a list is read as no list."""
    import time

    now = time.time()
    attacker.zadd(keys.WORKERS, {"inf": now, "nan": now, "big": now})
    attacker.hset(keys.worker_key("inf"), mapping={
        "name": "inf", "gpus": '[{"index": Infinity, "name": "g"}]', "queues": '["gpu"]'})
    attacker.hset(keys.worker_key("nan"), mapping={
        "name": "nan", "gpus": '[{"index": 0, "name": NaN}]', "queues": '[NaN, "gpu"]'})
    attacker.hset(keys.worker_key("big"), mapping={
        "name": "big", "gpus": '[{"index": 0, "name": 1e999}]', "queues": '[1e999]'})

    def strict(constant: str) -> None:
        raise ValueError(f"{constant} is no JSON")

    data = json.loads(cli("status", "--json").out, parse_constant=strict)
    workers = {w["name"]: w for w in data["workers"]}
    assert set(workers) == {"inf", "nan", "big"}, workers
    assert workers["inf"]["gpus"] == [] and workers["inf"]["queues"] == ["gpu"]
    assert all(workers[n]["gpus"] == [] and workers[n]["queues"] == [] for n in ("nan", "big"))
    assert "Traceback" not in cli("status").out


def test_a_task_stream_many_workers_name_is_read_once(
    cli: CLI, attacker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status reads each busy worker's task's newest live entries (5, each up to 64 MiB),
    and anyone with the workers' Redis access can make a thousand workers name the same
    task: 300 MB in one stream would be read a thousand times over, 300 GB held at once
    (attacker pass 3: 300 workers made 300 reads of it). Each task's stream is read once,
    however many workers name it."""
    import time

    from orchestrator.queue import plain

    task = "d" * 32
    now = time.time()
    with attacker.pipeline(transaction=False) as pipe:
        for i in range(300):
            pipe.zadd(keys.WORKERS, {f"w{i}": now})
            pipe.hset(keys.worker_key(f"w{i}"), mapping={"state": "busy", "task": task})
        pipe.xadd(keys.metrics_stream(task), {"p": json.dumps({"loss": [[7], [0.125]]})})
        pipe.execute()
    reads: list[str] = []
    real = plain.Pipeline.xrevrange

    def counted(self: plain.Pipeline, key: str, count: int) -> plain.Pipeline:
        reads.append(key)
        return real(self, key, count)

    monkeypatch.setattr(plain.Pipeline, "xrevrange", counted)
    data = cli.json("status")
    assert reads == [keys.metrics_stream(task)], len(reads)
    metrics = [w["metric"] for w in data["workers"]]  # type: ignore[index]
    assert len(metrics) == 300
    assert all(m == {"name": "loss", "step": 7, "value": 0.125} for m in metrics), metrics[:3]


def test_an_advertisement_of_many_fields_is_read_for_its_own_fields(
    cli: CLI, attacker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status read each worker's whole advertisement, and anyone with the workers' Redis
    access can add fields to one: two million (112 MB in Redis) made status take 8.6 s and
    540 MB (attacker pass 3), and a thousand such hashes would take hours. It reads the
    fields an advertisement has, whatever else is there."""
    import time

    from orchestrator.queue import plain

    with attacker.pipeline(transaction=False) as pipe:
        pipe.hset(keys.worker_key("many"), mapping={f"junk{j}": "v" for j in range(20_000)})
        pipe.hset(keys.worker_key("many"), mapping={"name": "many", "state": "busy",
                                                    "host": "h1", "queues": '["gpu"]'})
        pipe.zadd(keys.WORKERS, {"many": time.time()})
        pipe.execute()
    fields: list[int] = []
    real = plain.PlainRedis.execute

    def counted(self: plain.PlainRedis, commands: Any) -> Any:
        replies = real(self, commands)
        fields.extend(len(r) for r in replies if isinstance(r, list))
        return replies

    monkeypatch.setattr(plain.PlainRedis, "execute", counted)
    data = cli.json("status")
    [worker] = data["workers"]  # type: ignore[index]
    assert (worker["name"], worker["state"], worker["host"], worker["queues"]) == (
        "many", "busy", "h1", ["gpu"])
    assert max(fields) < 100, max(fields)
