"""`retrain up`: Redis, the scheduler and local workers on this machine, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def up(
    triggers: Annotated[
        Path | None,
        typer.Option("--triggers", help="Default: $RETRAIN_TRIGGERS_FILE, else ./triggers.yaml."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Local worker processes.")] = 1,
    gpus: Annotated[
        str, typer.Option("--gpus", help="all, none, or indices such as 0,1 (split among workers).")
    ] = "all",
    per_job: Annotated[int, typer.Option("--per-job", min=1, help="GPUs per job.")] = 1,
    queue: Annotated[
        list[str],
        typer.Option(
            "--queue",
            help="Queues the workers take (default: those triggers.yaml uses, and 'default').",
        ),
    ] = [],  # noqa: B006
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=1, max=65535, help="Scheduler's Prometheus port."),
    ] = None,
    allow_root: Annotated[
        bool,
        typer.Option(
            "--allow-root",
            envvar="RETRAIN_ALLOW_ROOT",
            help="Run as root: the local workers then run jobs as root (see `retrain worker "
            "--allow-root`), unless RETRAIN_JOB_USER names an account for them.",
        ),
    ] = False,
) -> None:
    """Run everything on this machine: Redis (embedded unless RETRAIN_REDIS_URL is set), the
    store, the scheduler and local workers. Ctrl-C stops it all; running jobs finish first
    (Ctrl-C twice hands them back to their queue)."""
    import os

    from orchestrator.errors import UserError
    from orchestrator.triggers.config import triggers_path
    from orchestrator.up import run_up
    from workers import sandbox

    # Before anything starts: its workers would refuse to, one by one.
    os.environ[sandbox.ALLOW_ROOT_ENV] = "1" if allow_root else ""
    try:
        sandbox.refuse_root_jobs()
        user = sandbox.job_user()  # RETRAIN_JOB_USER, which its workers read
    except sandbox.SandboxUnavailable as exc:
        raise UserError(
            str(exc)
            .replace("--job-user USER", "RETRAIN_JOB_USER=USER in the environment")
            .replace("--job-user ", "RETRAIN_JOB_USER=")
        ) from None
    if user is not None:
        problem = sandbox.job_user_cannot_reach(user)
        if problem:
            raise UserError(f"RETRAIN_JOB_USER={user.pw_name}: {problem}")
    # The workers' parent: the jobs must not read its environment from /proc either.
    sandbox.make_undumpable()
    code = run_up(
        triggers_path(triggers),
        queues=queue,
        workers=workers,
        gpus=gpus,
        per_job=per_job,
        metrics_port=metrics_port,
    )
    raise typer.Exit(code)
