"""`retrain worker`: run jobs from the queues on this machine's GPUs."""

from __future__ import annotations

from typing import Annotated

import typer


def worker(
    queue: Annotated[
        list[str],
        typer.Option("--queue", help="Queue to take jobs from (several: in priority order)."),
    ],
    gpus: Annotated[
        str,
        typer.Option(
            "--gpus",
            help="all, none, or indices such as 0,1 (detected with nvidia-smi). If another "
            "worker holds any of them, nothing starts (exit 2).",
        ),
    ] = "all",
    per_job: Annotated[int, typer.Option("--per-job", help="GPUs per job.", min=1)] = 1,
    name: Annotated[str | None, typer.Option("--name", help="Worker name prefix.")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Stop when the queues are empty.")] = False,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", help="Stop after this many jobs.", min=1)
    ] = None,
    abort_on_stop: Annotated[
        bool,
        typer.Option(
            "--abort-on-stop",
            help="On SIGTERM, stop the running job (grace, then SIGKILL) and put it back on "
            "its queue, instead of finishing it first.",
        ),
    ] = False,
    pass_env: Annotated[
        list[str],
        typer.Option(
            "--pass-env",
            metavar="NAME",
            help="Let this variable of the worker's environment reach jobs (repeatable; a glob "
            "such as 'WANDB_*' works). Jobs get no other credentials of the worker.",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Run a worker agent: one forking RQ worker per GPU slot, each pinned to its devices.

    SIGTERM or Ctrl+C: warm shutdown (finish the current job, take no new one). A second one,
    or the first with --abort-on-stop: stop the job gracefully and re-queue its task."""
    import os

    from orchestrator import lifeline
    from orchestrator.logs import configure
    from workers.agent import run
    from workers.jobenv import PASS_ENV

    if pass_env:
        # Inherited by every slot and work horse; read where the job's environment is made.
        os.environ[PASS_ENV] = ",".join(pass_env)

    configure()
    # Started by `retrain up`: stop as its Ctrl-C would if it dies (see orchestrator.lifeline).
    lifeline.hold(lifeline.WORKER)
    raise typer.Exit(
        run(
            queue,
            gpus=gpus,
            per_job=per_job,
            name=name,
            burst=burst,
            max_jobs=max_jobs,
            abort_on_stop=abort_on_stop,
        )
    )
