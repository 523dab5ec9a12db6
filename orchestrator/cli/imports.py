"""What each everyday command must not import: the packages that cost a command start-up time
it has no use for. `tests/test_cli_imports.py` runs each command in a fresh interpreter and
fails when one of its packages shows up in `sys.modules`.

Add a command here when you add one people run all day; when a command really needs a
package, take it off that command's list in the same change, and say why.
"""

from __future__ import annotations

HEAVY = frozenset(
    {
        "alembic",  # migrations: only when the schema is behind
        "apscheduler",  # the scheduler's cron and interval triggers
        "boto3",  # S3 storage: only when RETRAIN_STORAGE_URL is s3://
        "click",  # typer's base
        "botocore",
        "prometheus_client",  # the scheduler's /metrics
        "pydantic_settings",  # settings are a plain dataclass
        "redis",  # only commands that queue, or read queues
        "rich",  # only tables and live screens, never --json or a one-line note
        "rq",  # only commands that queue
        "sqlalchemy",  # the store's ORM: every command that reads through store/lean.py avoids it
        "pydantic",
        "structlog",  # daemons' logging
        "typer",  # the command tree: not for `dataset tag`'s plain form (cli/lean.py)
        "yaml",  # triggers and task files
    }
)
"""The packages the guard looks for (each one costs tens of milliseconds or more to import)."""

_NEVER = frozenset(
    {
        "alembic",
        "apscheduler",
        "boto3",
        "botocore",
        "prometheus_client",
        "pydantic_settings",
        "rq",
        "structlog",
        "yaml",
    }
)
"""What no everyday command needs on a current store with local storage."""

NOT_NEEDED: dict[tuple[str, ...], frozenset[str]] = {
    # Nothing of Redis but the wake-up after a write, which is one PUBLISH on a plain socket.
    # SQL on the bare driver (datasets/records.py, which the ORM path runs too).
    ("dataset", "create", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    ("dataset", "add", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    ("dataset", "close", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    # The tag from the labelling tool or a script: no typer either (cli/lean.fast_command).
    ("dataset", "tag", "--json"): _NEVER
    | {"redis", "rich", "sqlalchemy", "pydantic", "typer", "click"},
    ("dataset", "search", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    ("dataset", "show", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    # SQL on the bare driver (tasks/records.py, which TaskService.lookup and run_lineage run).
    ("task", "show", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    # Queues a job: RQ is the one place jobs are written (queue/adapter.py).
    ("task", "run", "--json"): (_NEVER - {"rq"}) | {"rich"},
    ("task", "list", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    # SQL on the bare driver (models/records.py, which ModelService.list runs too).
    ("model", "list", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
    # Reads through store/lean.py (scheduler/history.py: one SQL for both paths).
    ("history", "--json"): _NEVER | {"redis", "rich", "pydantic", "sqlalchemy"},
    # The status snapshot reads the store through store/lean.py, and Redis over a socket of
    # its own (queue/plain.py): redis-py only for a URL it cannot serve (TLS, options).
    ("status", "--json"): _NEVER | {"redis", "rich", "sqlalchemy", "pydantic"},
}
"""Per command (its words, ending with the option that picks its output): the packages it
must not load."""

NOT_ON_SQLITE = frozenset({"psycopg", "sqlalchemy.dialects.postgresql"})
"""What no command loads on the default SQLite store (a package, or a dotted module)."""
