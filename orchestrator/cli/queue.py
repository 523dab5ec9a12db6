"""`retrain queue ...` and `retrain redis ...`: the queues in Redis and the embedded server."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli import output
from orchestrator.cli.context import runtime

queue_app = typer.Typer(
    suggest_commands=False,
    help="Inspect queues and make Redis agree with the store.", no_args_is_help=True
)
redis_app = typer.Typer(
    suggest_commands=False,
    help="The embedded Redis used when RETRAIN_REDIS_URL is unset.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@queue_app.command("reconcile")
def reconcile(as_json: JsonFlag = False) -> None:
    """Enqueue queued tasks whose job is missing from Redis (once), and drop waiting jobs of
    aborted tasks. Safe to run any time, from anywhere, as often as you like."""
    report = runtime().tasks.reconcile()
    if as_json:
        output.print_json(report)
        return
    output.note(
        f"checked {report.checked} queued task(s): enqueued {len(report.enqueued)}, "
        f"removed {len(report.removed)} stale job(s)"
        + (
            f", replaced {len(report.replaced)} finished job(s) whose reports were lost"
            if report.replaced
            else ""
        )
    )
    for task_id in report.enqueued:
        print(task_id)


@queue_app.command("list")
def list_queues(as_json: JsonFlag = False) -> None:
    """Jobs waiting in Redis per queue and priority, for every queue tasks have used."""
    # The queues from the bare driver, the depths in the pipelined reads `status` makes over
    # a socket of its own: no SQLAlchemy, no redis-py, no RQ.
    import datetime as dt

    from orchestrator.cli.lean import lean_read
    from orchestrator.errors import ServiceUnavailable
    from orchestrator.queue import keys
    from orchestrator.queue.connection import embedded_url
    from orchestrator.redact import redact_url
    from orchestrator.status import read_redis
    from orchestrator.tasks.listing import queue_names

    names = lean_read(queue_names)
    settings = runtime().settings
    url = settings.redis_url or embedded_url(settings, start=True)
    redis = read_redis(url, dt.datetime.now(dt.timezone.utc))
    if redis.error is not None:
        where = redact_url(url) if url else "the embedded Redis"
        raise ServiceUnavailable(f"cannot reach Redis at {where}: {redis.error}")
    counts = {name: dict.fromkeys(keys.PRIORITIES, 0) for name in names}
    for rq_name, waiting in redis.waiting.items():
        base, priority, _gpus = keys.split_rq_queue(rq_name)
        if base in counts:
            counts[base][priority] += waiting
    if as_json:
        output.print_json(counts)
        return
    output.table(
        None,
        ["queue", "high", "normal", "low"],
        [(n, c["high"], c["normal"], c["low"]) for n, c in counts.items()],
    )
    if not names:
        output.note("no queue has been used yet")


@redis_app.command("status")
def redis_status() -> None:
    """Where the Redis in use is."""
    from orchestrator.queue.connection import embedded_url
    from orchestrator.redact import redact_url

    settings = runtime().settings
    if settings.redis_url:
        print(redact_url(settings.redis_url))
        output.note("using RETRAIN_REDIS_URL")
        return
    url = embedded_url(settings, start=False)
    if url:
        print(redact_url(url))  # its password, too, is for retrain's processes only
        output.note(f"embedded Redis for {settings.home} is running")
    else:
        output.note(f"embedded Redis for {settings.home} is not running (it starts on demand)")


@redis_app.command("stop")
def redis_stop(
    force: Annotated[
        bool, typer.Option("--force", help="Stop it even while `retrain up` uses it.")
    ] = False,
) -> None:
    """Stop this home's embedded Redis; its data is kept and reloaded on the next start."""
    from filelock import FileLock, Timeout

    from orchestrator.errors import UserError
    from orchestrator.queue.connection import stop_embedded

    settings = runtime().settings
    if not force and (settings.home / "up.lock").exists():
        up_lock = FileLock(str(settings.home / "up.lock"))
        try:
            up_lock.acquire(timeout=0)
            up_lock.release()
        except Timeout:
            raise UserError(
                f"retrain up is running for RETRAIN_HOME={settings.home} and uses this Redis: "
                "stopping it stops up; stop up with Ctrl-C instead, or pass --force"
            ) from None
    stopped = stop_embedded(settings)
    output.note("stopped the embedded Redis" if stopped else "the embedded Redis is not running")
