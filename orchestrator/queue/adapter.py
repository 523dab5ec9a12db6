"""The one place retrain talks to RQ: enqueue a task's job, look it up, remove it.

Jobs are JSON (RQ's JSONSerializer): a function named by dotted path and one argument, the
task's frozen payload. Never pickle: a pickled job is code that runs on every GPU host. Every
RQ object here comes from `rqjobs`, which reads nothing from Redis that could run code.
The job id is the task id, and `unique=True` makes RQ's enqueue atomic and idempotent, so a
retry, a reconcile pass and a second scheduler cannot queue one task twice.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, NamedTuple

from orchestrator.errors import ServiceUnavailable
from orchestrator.queue import keys, rqjobs, signing

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue
    from rq.job import Job

RESULT_TTL_S = 7 * 86400
JOB_TIMEOUT_MARGIN_S = 300
"""RQ's timeout is the task's plus this, so the job's own graceful timeout always acts first."""
FAILURE_TTL_S = 30 * 86400


class JobArguments(NamedTuple):
    """What a task's RQ job is made of, besides the constants above."""

    rq_queue: str
    payload: dict[str, Any]
    """Signed with the worker secret (when one is set)."""
    timeout: int
    description: str


def job_arguments(
    secret: str | None,
    task_id: str,
    payload: dict[str, Any],
    *,
    queue: str,
    priority: str,
    timeout_s: int,
) -> JobArguments:
    """The job `QueueAdapter.enqueue` hands RQ, and `plainjob` writes without RQ."""
    if timeout_s < 1:  # RQ would fall back to its 180 s default
        raise ValueError("a job needs an explicit timeout")
    # The job enforces the task's timeout itself (SIGTERM, grace, SIGKILL, a `failed`
    # report); RQ's timeout, which SIGKILLs the work horse, is only the backstop.
    # Routed by size: only a slot with at least this many GPUs listens to this RQ queue.
    gpus = int((payload.get("spec") or {}).get("gpus") or 0)
    return JobArguments(
        rq_queue=keys.rq_queue(queue, priority, gpus),
        payload=signing.sign_payload(secret, payload),
        timeout=timeout_s + JOB_TIMEOUT_MARGIN_S,
        description=f"{payload.get('project')}/{payload.get('name')} {task_id}",
    )


class QueueAdapter:
    """RQ queues on one Redis connection."""

    def __init__(self, redis: Redis, *, secret: str | None = None) -> None:
        self.redis = redis
        self.secret = secret
        """The worker secret: every payload enqueued is signed with it (see `signing`)."""

    def queue(self, name: str, priority: str = "normal", gpus: int = 0) -> Queue:
        return rqjobs.queue_class()(keys.rq_queue(name, priority, gpus), connection=self.redis)

    def enqueue(
        self, task_id: str, payload: dict[str, Any], *, queue: str, priority: str, timeout_s: int
    ) -> bool:
        """Put the task's job on its queue; False when it is there already."""
        from redis import RedisError
        from rq.exceptions import DuplicateJobError

        job = job_arguments(
            self.secret, task_id, payload, queue=queue, priority=priority, timeout_s=timeout_s
        )
        try:
            rqjobs.queue_class()(job.rq_queue, connection=self.redis).enqueue_call(
                keys.JOB_FUNCTION,
                args=(job.payload,),
                job_id=task_id,
                timeout=job.timeout,
                result_ttl=RESULT_TTL_S,
                failure_ttl=FAILURE_TTL_S,
                description=job.description,
                unique=True,
            )
        except DuplicateJobError:
            return False
        except RedisError as exc:
            raise ServiceUnavailable(f"cannot enqueue task {task_id}: {exc}") from None
        return True

    def job(self, task_id: str) -> Job | None:
        from rq.exceptions import NoSuchJobError

        try:
            return rqjobs.job_class().fetch(
                task_id, connection=self.redis, serializer=rqjobs.serializer()
            )
        except NoSuchJobError:
            return None

    def existing(self, task_ids: list[str]) -> set[str]:
        """Which of these tasks have a job in Redis (one round trip)."""
        from rq.job import Job

        if not task_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(Job.key_for(task_id))
        return {tid for tid, found in zip(task_ids, pipe.execute(), strict=True) if found}

    def finished_before(self, task_ids: list[str], before: dt.datetime) -> set[str]:
        """Which of these tasks have a job RQ says ended, finished or failed (a worker that
        refused its payload fails it), before `before` (one round trip; a field that does not
        parse counts as not ended)."""
        from rq.job import Job

        if not task_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(Job.key_for(task_id), "status", "ended_at")
        found = set()
        for task_id, (status, ended_at) in zip(task_ids, pipe.execute(), strict=True):
            if status not in (b"finished", b"failed") or not ended_at:
                continue
            try:
                when = dt.datetime.fromisoformat(ended_at.decode().replace("Z", "+00:00"))
            except (ValueError, UnicodeDecodeError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
            if when < before:
                found.add(task_id)
        return found

    def reports_all_read(self) -> bool:
        """Whether the scheduler has read every report on the stream (none waits unread or
        unacknowledged): then a finished job whose task is still queued lost its reports."""
        from redis import ResponseError

        if not self.redis.exists(keys.REPORTS_STREAM):
            return True
        try:
            groups = self.redis.xinfo_groups(keys.REPORTS_STREAM)
        except ResponseError:
            return False
        for group in groups:
            name = group.get("name")
            name = name.decode() if isinstance(name, bytes) else name
            if name == keys.REPORTS_GROUP:
                return not group.get("pending") and group.get("lag") == 0
        return False  # entries nobody has read yet

    def remove(self, task_id: str) -> bool:
        """Delete a task's job (from its queue and every registry); False if there was none."""
        from redis import RedisError

        try:
            job = self.job(task_id)
            if job is None:
                return False
            self._delete(job)
        except RedisError as exc:
            raise ServiceUnavailable(f"cannot remove the job of task {task_id}: {exc}") from None
        return True

    def _delete(self, job: Job) -> None:
        """RQ's `Job.delete`, made safe for the job of a dead worker. RQ keeps listing an
        execution in the job's execution registry for a minute after the execution's own
        key expired, and `Job.delete` then raises "Execution ... not found in Redis" (RQ 2
        and 3) with the job half-deleted. Executions whose key is gone are dropped from the
        list first; one that expires in between is dropped on a second try."""
        from rq.executions import Execution

        for attempt in (1, 2):
            registry_key = job.execution_registry.key
            listed = [
                i.decode() if isinstance(i, bytes) else str(i)
                for i in self.redis.zrange(registry_key, 0, -1)
            ]
            if listed:
                pipe = self.redis.pipeline(transaction=False)
                for execution_id in listed:
                    pipe.exists(Execution(execution_id, job.id, self.redis).key)
                found = pipe.execute()
                gone = [e for e, alive in zip(listed, found, strict=True) if not alive]
                if gone:
                    self.redis.zrem(registry_key, *gone)
            try:
                job.delete(remove_from_queue=True)
                return
            except ValueError:
                if attempt == 2:
                    raise

    def cancel(self, task_id: str) -> str | None:
        """Stop a task's job: a waiting job is deleted; for a running one the abort flag is
        set, and the job stops its process group (SIGTERM, a grace period, then SIGKILL) and
        reports `aborted`. Returns the job's status before, None if there was no job."""
        from redis import RedisError

        try:
            job = self.job(task_id)
            if job is None:
                return None
            raw = job.get_status()
            status = str(getattr(raw, "value", raw))  # JobStatus is a str enum: its value
            if status == "started":
                self.redis.set(keys.abort_key(task_id), b"1", ex=keys.ABORT_TTL_S)
            else:
                self._delete(job)
        except RedisError as exc:
            raise ServiceUnavailable(f"cannot cancel the job of task {task_id}: {exc}") from None
        return status

    def counts(self, queue: str) -> dict[str, int]:
        """Jobs waiting per priority of `queue`, every job size included."""
        counts = dict.fromkeys(keys.PRIORITIES, 0)
        prefix = keys.RQ_QUEUE_PREFIX
        for raw in self.redis.smembers(keys.RQ_QUEUES):
            rq_name = (raw.decode() if isinstance(raw, bytes) else str(raw)).removeprefix(prefix)
            base, priority, _gpus = keys.split_rq_queue(rq_name)
            if base == queue:
                counts[priority] += int(self.redis.llen(prefix + rq_name))
        return counts
