"""The only RQ classes retrain lets read Redis: JSON only, retrain's job function only.

Anyone who can write to Redis can write an RQ job hash, and RQ trusts what it reads there:
with its default serializer it unpickles `data` and `meta`, it imports and calls whatever the
job names as its function, its success/failure/stopped callbacks, and posts to its webhooks.
So every RQ object retrain makes (queues, jobs, the worker, registry clean-ups) is built from
these classes:

- `SERIALIZER` is RQ's JSONSerializer: reading a hash never unpickles anything;
- `SafeJob.func` is `workers.job.run_task` or a refusal: any other name is never imported;
- callbacks and webhooks read from Redis are dropped: retrain sets none, so a job that carries
  them was not made by retrain.

A refused job fails in RQ with the reason (kept in its failed registry for inspection); nothing
it names is imported or run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.queue import keys

if TYPE_CHECKING:
    from rq import Queue
    from rq.job import Job

_CLASSES: tuple[type[Any], type[Any]] | None = None


class RefusedJob(Exception):
    """A job in Redis that retrain did not make: it is recorded as failed, never run."""


def serializer() -> Any:
    from rq.serializers import JSONSerializer

    return JSONSerializer


def job_class() -> type[Job]:
    return _classes()[0]


def queue_class() -> type[Queue]:
    return _classes()[1]


def _classes() -> tuple[type[Any], type[Any]]:
    """Made on first use, so importing this module does not import RQ."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    from rq import Queue
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.utils import import_attribute

    class SafeJob(Job):
        """An RQ job that can only ever run retrain's job function."""

        _unreadable: str | None = None
        """Why the job's hash could not be read (set by `restore`); such a job is refused."""

        @property
        def func(self) -> Any:
            if self._unreadable is not None:
                raise RefusedJob(f"refused job {self.id}: {self._unreadable} (nothing was run)")
            name = self.func_name
            if name != keys.JOB_FUNCTION or self.instance is not None:
                raise RefusedJob(
                    f"refused job {self.id}: it names {name!r}, and a retrain worker runs only "
                    f"{keys.JOB_FUNCTION}; it was not made by retrain (nothing was run)"
                )
            return import_attribute(name)

        # Callbacks named in Redis are never imported: retrain sets none.
        @property
        def success_callback(self) -> None:
            return None

        @property
        def failure_callback(self) -> None:
            return None

        @property
        def stopped_callback(self) -> None:
            return None

        def restore(self, raw_data: dict[bytes, Any]) -> None:
            # A hash anyone with Redis access wrote: a field RQ cannot parse (`timeout=abc`, a
            # bad date or status) must fail this job alone, not the worker slot or the
            # scheduler's registry clean-up that came across it.
            try:
                super().restore(raw_data)
            except NoSuchJobError:
                raise
            except Exception as exc:
                self._unreadable = f"unreadable job hash ({type(exc).__name__}: {str(exc)[:200]})"
                self.timeout = None
                self._status = JobStatus.QUEUED
            self.webhooks = []

    class SafeQueue(Queue):
        """An RQ queue whose jobs are `SafeJob`s, always read and written as JSON."""

        job_class = SafeJob

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["serializer"] = serializer()
            kwargs["job_class"] = SafeJob
            super().__init__(*args, **kwargs)

    _CLASSES = (SafeJob, SafeQueue)
    return _CLASSES
