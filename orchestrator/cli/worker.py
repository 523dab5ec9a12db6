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
    sandbox: Annotated[
        str,
        typer.Option(
            "--sandbox",
            envvar="RETRAIN_SANDBOX",
            help="auto: confine jobs with Landlock when the kernel has it (and say so when "
            "not); required: refuse to start without it; off: jobs run unconfined.",
        ),
    ] = "auto",
    sandbox_write: Annotated[
        list[str],
        typer.Option(
            "--sandbox-write",
            metavar="DIR",
            envvar="RETRAIN_SANDBOX_WRITE",
            help="A folder jobs may also write, such as a scratch disk (repeatable; in the "
            "environment: space-separated).",
        ),
    ] = [],  # noqa: B006
    sandbox_hide: Annotated[
        list[str],
        typer.Option(
            "--sandbox-hide",
            metavar="PATH",
            envvar="RETRAIN_SANDBOX_HIDE",
            help="A file or folder jobs may not read, such as where the worker's credentials "
            "are kept outside its home and /etc/retrain (repeatable; in the environment: "
            "space-separated).",
        ),
    ] = [],  # noqa: B006
    job_user: Annotated[
        str | None,
        typer.Option(
            "--job-user",
            metavar="USER",
            envvar="RETRAIN_JOB_USER",
            help="Run jobs as this user (a worker running as root only); their outputs and "
            "tmp folders are theirs, caches stay read-only to them.",
        ),
    ] = None,
    allow_root: Annotated[
        bool,
        typer.Option(
            "--allow-root",
            envvar="RETRAIN_ALLOW_ROOT",
            help="A worker running as root without --job-user runs its jobs as root (with no "
            "capabilities, confined, but owning root's files and sockets). Without this "
            "option such a worker refuses to start.",
        ),
    ] = False,
    allow_builds: Annotated[
        bool,
        typer.Option(
            "--allow-builds",
            envvar="RETRAIN_ALLOW_BUILDS",
            help="Let job environments build packages from source (sdists, local folders, "
            "git URLs): this runs each package's own build code on this machine, confined "
            "and without the worker's credentials. Default: wheels only.",
        ),
    ] = False,
) -> None:
    """Run a worker agent: one forking RQ worker per GPU slot, each pinned to its devices.

    SIGTERM or Ctrl+C: warm shutdown (finish the current job, take no new one). A second one,
    or the first with --abort-on-stop: stop the job gracefully and re-queue its task."""
    import os

    from orchestrator import lifeline
    from orchestrator.errors import UserError
    from orchestrator.logs import configure
    from workers import sandbox as confine
    from workers.agent import run
    from workers.jobenv import PASS_ENV

    # First: from here on, same-uid processes (the jobs) cannot read this process's
    # environment or memory; inherited by the slots' work horses.
    confine.make_undumpable()
    if sandbox not in confine.MODES:
        raise UserError(f"--sandbox {sandbox}: must be one of {', '.join(confine.MODES)}")
    for folder in sandbox_write:
        if not os.path.isabs(folder) or not os.path.isdir(folder):
            raise UserError(
                f"--sandbox-write {folder}: must be an existing folder, as an absolute path"
            )
    if sandbox_write:
        from pathlib import Path

        from orchestrator.settings import Settings

        settings = Settings.load()
        keep = [settings.home, settings.resolved_cache_dir]
        for folder in sandbox_write:
            real = Path(os.path.realpath(folder))
            for kept in keep:
                if (
                    real == Path(os.path.realpath(kept))
                    or real in Path(os.path.realpath(kept)).parents
                ):
                    raise UserError(
                        f"--sandbox-write {folder}: holds the worker's {kept} (its secret and "
                        "caches); name a folder beside it"
                    )
    os.environ[confine.SANDBOX_ENV] = sandbox
    os.environ[confine.WRITE_ENV] = " ".join(sandbox_write)
    for path in sandbox_hide:
        if not os.path.isabs(path):
            raise UserError(f"--sandbox-hide {path}: must be an absolute path")
    os.environ[confine.HIDE_ENV] = " ".join(sandbox_hide)
    os.environ[confine.JOB_USER_ENV] = job_user or ""
    os.environ[confine.ALLOW_BUILDS_ENV] = "1" if allow_builds else ""
    os.environ[confine.ALLOW_ROOT_ENV] = "1" if allow_root else ""
    try:
        confine.level()
        user = confine.job_user()
        confine.refuse_root_jobs()
    except confine.SandboxUnavailable as exc:
        raise UserError(str(exc)) from None
    if user is not None:
        problem = confine.job_user_cannot_reach(user)
        if problem:
            raise UserError(f"--job-user {user.pw_name}: {problem}")

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

