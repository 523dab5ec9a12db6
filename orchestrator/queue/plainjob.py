"""A task's job written to Redis exactly as `QueueAdapter.enqueue` has RQ write it, without
importing RQ or redis-py (together ~150 ms of `retrain task run`'s start): the same job
arguments (`adapter.job_arguments`: queue, signed payload, timeout, description), the same
hash fields in RQ's JSON serialization, and RQ's own atomic unique enqueue (its Lua script:
nothing is written when the task's job exists already), sent over `queue.plain`.

`tests/queue/test_plainjob.py` checks the hash against one RQ writes and that a worker runs
it: an RQ upgrade that changes any of this fails there, not on a GPU host.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from typing import Any

from orchestrator.queue import keys
from orchestrator.queue.adapter import FAILURE_TTL_S, RESULT_TTL_S, job_arguments

RQ_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""`rq.utils.utcformat`."""

UNIQUE_ENQUEUE_SCRIPT = """
    -- KEYS[1] = job key (rq:job:{job_id})
    -- KEYS[2] = queue key (rq:queue:{queue_name})
    -- ARGV[1] = job_id
    -- ARGV[2] = push direction ("L", "R", or "N" for no push)
    -- ARGV[3] = TTL in seconds (-1 for no TTL)
    -- ARGV[4+] = field1, value1, field2, value2, ... for HSET

    -- Check if job hash already exists
    if redis.call("EXISTS", KEYS[1]) == 1 then
        return 0  -- Duplicate, reject
    end

    -- Save job hash
    if #ARGV > 3 then
        redis.call("HSET", KEYS[1], unpack(ARGV, 4))
    end

    -- Set TTL if specified
    local ttl = tonumber(ARGV[3])
    if ttl and ttl > 0 then
        redis.call("EXPIRE", KEYS[1], ttl)
    end

    -- Push job ID to queue (skip if "N")
    if ARGV[2] == "L" then
        redis.call("LPUSH", KEYS[2], ARGV[1])
    elseif ARGV[2] == "R" then
        redis.call("RPUSH", KEYS[2], ARGV[1])
    end

    return 1  -- Success
"""
"""`rq.scripts.UNIQUE_ENQUEUE_SCRIPT`, character for character (a test compares them)."""


def job_hash(
    task_id: str,
    payload: dict[str, Any],
    *,
    queue: str,
    priority: str,
    timeout_s: int,
    secret: str | None,
    now: dt.datetime | None = None,
) -> tuple[str, dict[str, str | bytes]]:
    """The RQ queue name and the job hash's fields (`rq.job.Job.to_dict` of the job that
    `QueueAdapter.enqueue` makes, its `None` fields left out as RQ's script leaves them)."""
    job = job_arguments(
        secret, task_id, payload, queue=queue, priority=priority, timeout_s=timeout_s
    )
    # RQ's JSONSerializer of (function, instance, args, kwargs).
    data = json.dumps([keys.JOB_FUNCTION, None, [job.payload], {}]).encode("utf-8")
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime(RQ_TIME_FORMAT)
    fields: dict[str, str | bytes] = {
        "created_at": stamp,
        "data": zlib.compress(data),
        "success_callback_name": "",
        "failure_callback_name": "",
        "stopped_callback_name": "",
        "started_at": "",
        "ended_at": "",
        "last_heartbeat": "",
        "worker_name": "",
        "group_id": "",
        "origin": job.rq_queue,
        "description": job.description,
        "enqueued_at": stamp,
        "timeout": str(job.timeout),
        "result_ttl": str(RESULT_TTL_S),
        "failure_ttl": str(FAILURE_TTL_S),
        "status": "queued",
    }
    return job.rq_queue, fields


def enqueue_commands(
    task_id: str, rq_queue: str, fields: dict[str, str | bytes]
) -> list[list[Any]]:
    """What RQ sends for a unique enqueue (the queue registered, then its script): the
    script's reply is 1 when the job was written, 0 when the task had one already."""
    queue_key = keys.RQ_QUEUE_PREFIX + rq_queue
    flat: list[str | bytes] = []
    for name, value in fields.items():
        flat += [name, value]
    return [
        ["SADD", keys.RQ_QUEUES, queue_key],
        [
            "EVAL",
            UNIQUE_ENQUEUE_SCRIPT,
            "2",
            keys.RQ_JOB_PREFIX + task_id,
            queue_key,
            task_id,
            "R",
            "-1",
            *flat,
        ],
    ]
