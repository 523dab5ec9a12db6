"""Every Redis name retrain uses, in one place (RQ's own keys stay RQ's)."""

from __future__ import annotations

PREFIX = "retrain"

JOB_FUNCTION = "workers.job.run_task"
"""The job function, named by dotted path: Redis holds its name and JSON arguments, never
pickled code. Workers import it."""

# RQ's own key names (`rq.job.Job.redis_job_namespace_prefix`,
# `rq.Queue.redis_queue_namespace_prefix`, `rq.Queue.redis_queues_keys`), not imported for
# start-up time (`plainjob`, `status`); a test checks they still match RQ.
RQ_JOB_PREFIX = "rq:job:"
RQ_QUEUE_PREFIX = "rq:queue:"
RQ_QUEUES = "rq:queues"

PRIORITIES = ("high", "normal", "low")
"""Priorities are separate RQ queues that a worker drains in this order: `gpu:high` before
`gpu` before `gpu:low`. Within one priority, jobs run in the order they were queued."""

SIZE_SEPARATOR = "@"
"""Jobs are routed by the GPUs they need: `gpu` holds jobs that need none, `gpu@N` those that
need N (retrain queue names never contain `@` or `:`). A slot of k GPUs listens to `gpu@k`
down to `gpu`, so a job only ever reaches a slot big enough for it."""


def sized_queue(queue: str, gpus: int = 0) -> str:
    """The queue of jobs that need `gpus` GPUs: `gpu` for none, `gpu@2` for two."""
    return f"{queue}{SIZE_SEPARATOR}{gpus}" if gpus > 0 else queue


def rq_queue(queue: str, priority: str = "normal", gpus: int = 0) -> str:
    """The RQ queue name for a retrain queue, priority and job size (`gpu`, `gpu:high`,
    `gpu@2:low`)."""
    sized = sized_queue(queue, gpus)
    return sized if priority == "normal" else f"{sized}:{priority}"


def rq_queues_in_order(queue: str, gpus: int = 0) -> list[str]:
    """What a slot of `gpus` GPUs listening on `queue` asks RQ for, in order: by priority
    first (a priority means the same on every slot), then the largest jobs it can hold
    first. A big slot is the only place a big job can run, while small jobs also fit the
    small slots: taking the small ones first would let a steady stream of them starve the
    big ones for good."""
    return [rq_queue(queue, p, n) for p in PRIORITIES for n in range(gpus, -1, -1)]


def split_rq_queue(rq_name: str) -> tuple[str, str, int]:
    """`gpu@2:high` -> (`gpu`, `high`, 2): the inverse of `rq_queue`. A name that does not
    parse as sized (some other RQ user's queue) is its own base, normal, size 0."""
    base, priority = rq_name, "normal"
    for candidate in PRIORITIES:
        if candidate != "normal" and rq_name.endswith(f":{candidate}"):
            base, priority = rq_name.removesuffix(f":{candidate}"), candidate
            break
    name, separator, size = base.rpartition(SIZE_SEPARATOR)
    if separator and name and size.isdecimal() and int(size) > 0:
        return name, priority, int(size)
    return base, priority, 0


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

REPORTS_DEAD = f"{PREFIX}:reports:dead"
"""Stream of reports the scheduler refused (malformed, oversized, out of range), each with its
reason and (the start of) its data: kept for inspection, never applied, never blocking."""

REPORTS_DEAD_MAXLEN = 10_000

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


def metrics_stream(task_id: str) -> str:
    """Stream of a running task's metric points (`workers/channel.py`): entries `p` (a JSON
    list of [series, step, value]) and a last `end` entry (how the run ended)."""
    return f"{PREFIX}:metrics:{task_id}"


def abort_key(task_id: str) -> str:
    """Set by `retrain task abort` for a running task; the job's heartbeat thread sees it and
    stops the user's process group gracefully (RQ's own stop command would SIGKILL the work
    horse and orphan the user's processes)."""
    return f"{PREFIX}:abort:{task_id}"


ABORT_TTL_S = 7 * 86400


def fence_key(task_id: str) -> str:
    """The attempt of the task that may run now, set by the scheduler when it gives a lost
    run to a new attempt (its number) or fails it (`-`). A worker back from the dead (a paused
    VM, a network split) sees another value and stops its job: its reports would be refused
    as stale anyway, and its processes must not run on."""
    return f"{PREFIX}:fence:{task_id}"


FENCE_TTL_S = 7 * 86400


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
