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
) -> None:
    """Run everything on this machine: Redis (embedded unless RETRAIN_REDIS_URL is set), the
    store, the scheduler and local workers. Ctrl-C stops it all; running jobs finish first
    (Ctrl-C twice hands them back to their queue)."""
    from orchestrator.triggers.config import triggers_path
    from orchestrator.up import run_up
    from workers.sandbox import make_undumpable

    # The workers' parent: the jobs must not read its environment from /proc either.
    make_undumpable()
    code = run_up(
        triggers_path(triggers),
        queues=queue,
        workers=workers,
        gpus=gpus,
        per_job=per_job,
        metrics_port=metrics_port,
    )
    raise typer.Exit(code)
