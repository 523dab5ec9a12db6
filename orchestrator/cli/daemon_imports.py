"""What the daemons must not load before they serve: `retrain scheduler` before its first poll
(the health file it writes after it) and the time a standby needs to take over depend on it.
`tests/triggers/test_scheduler_start.py` runs the scheduler in a fresh interpreter and fails
when one of these is in `sys.modules` at its first health beat.

Each one is loaded later, when it is used: after the first poll, or never.
"""

from __future__ import annotations

SCHEDULER_FIRST_POLL = frozenset(
    {
        "alembic",  # migrations: only when the store's schema is behind
        "apscheduler",  # cron and interval triggers: only when the file has one
        "boto3",  # S3 storage: only when RETRAIN_STORAGE_URL is s3://
        "botocore",
        "prometheus_client",  # only with --metrics-port
        "rich",  # structlog's console renderer: only on a terminal (orchestrator/logs.py)
        "rq",  # pushing a job (the first poll fired one) and reconcile, which follows the poll
    }
)
"""What `retrain scheduler` loads only after its first poll, when that poll fires nothing, on a
current store with local storage and a triggers file without cron or interval triggers, and
logging off a terminal."""
