"""Every Redis name retrain uses, in one place (RQ's own keys stay RQ's)."""

from __future__ import annotations

PREFIX = "retrain"

JOB_FUNCTION = "workers.job.run_task"
"""The job function, named by dotted path: Redis holds its name and JSON arguments, never
pickled code. Workers import it."""

PRIORITIES = ("high", "normal", "low")
"""Priorities are separate RQ queues that a worker drains in this order: `gpu:high` before
`gpu` before `gpu:low`. Within one priority, jobs run in the order they were queued."""


def rq_queue(queue: str, priority: str = "normal") -> str:
    """The RQ queue name for a retrain queue and priority (`gpu`, `gpu:high`, `gpu:low`)."""
    return queue if priority == "normal" else f"{queue}:{priority}"


def rq_queues_in_order(queue: str) -> list[str]:
    """What a worker listening on `queue` asks RQ for, highest priority first."""
    return [rq_queue(queue, p) for p in PRIORITIES]


def events_channel(db: int) -> str:
    """Pub/sub channel: the store publishes here after every commit that wrote events, and
    the scheduler polls at once instead of waiting for its timer. Redis pub/sub ignores the
    database number, so it is in the name: deployments sharing one Redis server on different
    databases must not wake each other."""
    return f"{PREFIX}:events:{db}"

SCHEDULER_LEASE = f"{PREFIX}:scheduler:leader"
"""`SET NX PX` lease held by the one scheduler that fires triggers; the others stand by."""

REPORTS_STREAM = f"{PREFIX}:reports"
"""Stream of worker reports (started, heartbeat, finished) as JSON; workers never touch the
database, the scheduler applies these to the store."""

REPORTS_GROUP = "scheduler"
"""Consumer group the schedulers read `REPORTS_STREAM` with."""

HEARTBEAT_TTL_S = 90
"""A running task whose heartbeat key is older than this (gone) has lost its worker."""


def heartbeat_key(task_id: str) -> str:
    """`SET ... EX HEARTBEAT_TTL_S` by the worker running the task: its liveness signal."""
    return f"{PREFIX}:heartbeat:{task_id}"


def logs_stream(task_id: str) -> str:
    """Stream of a running task's log lines."""
    return f"{PREFIX}:logs:{task_id}"


def abort_key(task_id: str) -> str:
    """Set by `retrain task abort` for a running task; the job's heartbeat thread sees it and
    stops the user's process group gracefully (RQ's own stop command would SIGKILL the work
    horse and orphan the user's processes)."""
    return f"{PREFIX}:abort:{task_id}"


ABORT_TTL_S = 7 * 86400


WORKERS = f"{PREFIX}:workers"
"""Sorted set: every worker that announced itself, scored by its last heartbeat (epoch
seconds). A member whose `worker_key` hash has expired is a lost worker (killed, host down);
a worker that stops cleanly removes itself from both."""


def worker_key(name: str) -> str:
    """Hash a worker keeps alive with a TTL (`heartbeat_ttl_s`) for `retrain status`.

    Fields (all strings): `name`, `host`, `pid`, `queues` (JSON list, priority order), `gpus`
    (JSON list of {"index", "uuid", "name", "memory_mib"}), `state` (idle, busy, stopping),
    `task` (the running task's id, or empty), `task_started` (ISO time, or empty), `started`
    (ISO time the worker started) and `heartbeat` (ISO time of its last beat)."""
    return f"{PREFIX}:worker:{name}"
