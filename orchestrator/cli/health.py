"""`retrain health scheduler|worker`: exit 0 while this host's daemons of that kind loop,
1 otherwise; for container probes and monitoring (see orchestrator/health.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestrator.errors import UserError


def health(
    role: Annotated[str, typer.Argument(help="scheduler or worker", metavar="ROLE")],
    max_age: Annotated[
        float | None,
        typer.Option(
            "--max-age",
            min=1,
            help="Seconds since the last loop or heartbeat (default: scheduler 60, worker "
            "RETRAIN_HEARTBEAT_TTL_S + 30, i.e. 120).",
        ),
    ] = None,
) -> None:
    """Check that every scheduler or worker of this RETRAIN_HOME on this host is alive and
    looping. Needs neither the database nor Redis."""
    from orchestrator import health as checks
    from orchestrator.settings import Settings

    if role not in checks.ROLES:
        raise UserError(f"ROLE: {role!r} is not scheduler or worker")
    settings = Settings.load()
    limit = max_age or checks.default_max_age(role, settings.heartbeat_ttl_s)
    healthy, message = checks.check(settings.home, role, limit)
    (sys.stdout if healthy else sys.stderr).write(message + "\n")
    raise typer.Exit(0 if healthy else 1)
