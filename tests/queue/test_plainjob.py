"""The job `task run` writes without RQ (queue/plainjob.py) is the job RQ writes: the same hash,
the same queue, the same unique enqueue; an RQ upgrade that changes any of it fails here."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from orchestrator.queue import keys, plainjob
from orchestrator.queue.adapter import QueueAdapter
from orchestrator.queue.plain import PlainRedis
from tests.tasks.conftest import machine_redis_url

SECRET = "s" * 32
TASK = "0123456789abcdef0123456789abcdef"
PAYLOAD = {
    "version": 1,
    "task_id": TASK,
    "project": "team/vision",
    "name": "train",
    "spec": {"gpus": 2, "timeout_s": 60, "note": "ünïcode"},
}


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def test_names_and_script_are_rqs() -> None:
    from rq import Queue
    from rq.job import Job
    from rq.scripts import UNIQUE_ENQUEUE_SCRIPT
    from rq.utils import utcformat

    assert plainjob.UNIQUE_ENQUEUE_SCRIPT == UNIQUE_ENQUEUE_SCRIPT
    assert Job.redis_job_namespace_prefix == keys.RQ_JOB_PREFIX
    assert Queue.redis_queue_namespace_prefix == keys.RQ_QUEUE_PREFIX
    assert Queue.redis_queues_keys == keys.RQ_QUEUES
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    assert now.strftime(plainjob.RQ_TIME_FORMAT) == utcformat(now)


Written = tuple[dict[Any, Any], int, set[Any], dict[Any, list[Any]]]


def _written(client: redis.Redis) -> Written:
    job = client.hgetall(keys.RQ_JOB_PREFIX + TASK)
    queues = client.smembers(keys.RQ_QUEUES)
    lists = {q: client.lrange(q, 0, -1) for q in queues}
    return job, client.ttl(keys.RQ_JOB_PREFIX + TASK), queues, lists


def test_the_plain_job_is_the_job_rq_writes(client: redis.Redis) -> None:
    url = machine_redis_url()
    adapter = QueueAdapter(client, secret=SECRET)
    assert adapter.enqueue(TASK, dict(PAYLOAD), queue="gpu", priority="high", timeout_s=60)
    by_rq = _written(client)
    client.flushdb()

    rq_queue, fields = plainjob.job_hash(
        TASK, dict(PAYLOAD), queue="gpu", priority="high", timeout_s=60, secret=SECRET
    )
    plain = PlainRedis.of(url)
    assert plain is not None
    try:
        replies = plain.execute(plainjob.enqueue_commands(TASK, rq_queue, fields))
        assert replies == [1, 1]
        by_plain = _written(client)
        # Once only: a second enqueue of the task's job writes nothing (RQ's `unique=True`).
        again = plainjob.job_hash(
            TASK, {**PAYLOAD, "name": "other"}, queue="gpu", priority="high", timeout_s=60,
            secret=SECRET,
        )
        assert plain.execute(plainjob.enqueue_commands(TASK, *again)) == [0, 0]
    finally:
        plain.close()
    assert _written(client) == by_plain

    rq_job, plain_job = dict(by_rq[0]), dict(by_plain[0])
    for times in (b"created_at", b"enqueued_at"):  # when each was written
        assert len(rq_job.pop(times)) == len(plain_job.pop(times))
    # The payload as the worker reads it (zlib levels may differ in the compressed bytes).
    assert zlib.decompress(rq_job.pop(b"data")) == zlib.decompress(plain_job.pop(b"data"))
    assert plain_job == rq_job
    assert rq_job[b"origin"] == b"gpu@2:high"
    assert by_plain[1:] == by_rq[1:]  # no expiry, the queue registered, the job on its list
