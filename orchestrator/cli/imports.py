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
        "filelock",  # only to start the embedded Redis, or to fetch a git mirror or the cache
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

_LEAN = _NEVER | {"redis", "sqlalchemy", "pydantic"}
"""What a command that reads and writes through store/lean.py never loads: SQL on the bare
driver (the record modules the ORM path runs too), and Redis, when at all, over a socket of its
own (queue/plain.py)."""

NOT_NEEDED: dict[tuple[str, ...], frozenset[str]] = {
    # Nothing of Redis but the wake-up after a write, which is one PUBLISH on a plain socket.
    # SQL on the bare driver (datasets/records.py, which the ORM path runs too).
    ("dataset", "create", "--json"): _LEAN | {"rich"},
    ("dataset", "add", "--json"): _LEAN | {"rich", "filelock"},  # nothing is stored yet
    ("dataset", "close", "--json"): _LEAN | {"rich"},
    # For people: the id on stdout and a one-line note (no table).
    ("dataset", "create"): _LEAN | {"rich"},
    ("dataset", "add"): _LEAN | {"rich", "filelock"},
    ("dataset", "close"): _LEAN | {"rich"},
    # The tag from the labelling tool or a script: no typer either (cli/lean.fast_command).
    ("dataset", "tag", "--json"): _LEAN | {"rich", "typer", "click"},
    ("dataset", "tag"): _LEAN | {"rich", "typer", "click"},
    # A version's tags removed or published (events triggers react to), its files listed.
    ("dataset", "untag", "--json"): _LEAN | {"rich"},
    ("dataset", "untag"): _LEAN | {"rich"},
    ("dataset", "publish"): _LEAN | {"rich"},
    ("dataset", "list", "--json"): _LEAN | {"rich"},
    ("dataset", "list"): _LEAN,
    ("dataset", "search", "--json"): _LEAN | {"rich"},
    ("dataset", "show", "--json"): _LEAN | {"rich"},
    # Tables for people: rich, and nothing else heavy.
    ("dataset", "search"): _LEAN,
    ("dataset", "show"): _LEAN,
    # SQL on the bare driver (tasks/records.py, which TaskService.lookup and run_lineage run).
    ("task", "show", "--json"): _LEAN | {"rich"},
    ("task", "show"): _LEAN,
    # The run cloned and queued on the bare driver (tasks/runs.py, with the ORM path's clone
    # and payload code), its RQ job written over a plain socket (queue/plainjob.py). Asking
    # a repository where its branch points (`git ls-remote`) and finding the running embedded
    # Redis take no lock.
    ("task", "run", "--json"): _LEAN | {"rich", "filelock"},
    ("task", "run"): _LEAN | {"rich", "filelock"},
    ("task", "list", "--json"): _LEAN | {"rich"},
    # A run's output and metrics, queued or running: the task and its stored series on the
    # bare driver (tasks/records.py), its live stream over a socket of its own
    # (queue/plain.py). A metrics table is drawn with rich.
    ("logs",): _LEAN | {"rich"},
    ("metrics", "--json"): _LEAN | {"rich"},
    ("metrics",): _LEAN,
    # The queues on the bare driver (tasks/listing.py), their depths in status's pipelined
    # reads over a socket of its own (status.read_redis): no RQ, no redis-py.
    ("queue", "list", "--json"): _LEAN | {"rich"},
    ("queue", "list"): _LEAN,
    # SQL on the bare driver (models/records.py, which ModelService.list runs too).
    ("model", "list", "--json"): _LEAN | {"rich"},
    # A model tagged or published from CI (an event triggers react to): one transaction on
    # the bare driver (models/records.py, which ModelService runs too).
    ("model", "tag", "--json"): _LEAN | {"rich"},
    ("model", "tag"): _LEAN | {"rich"},
    ("model", "publish"): _LEAN | {"rich"},
    # The model and its run and template (tasks/records.model_show, which model_lineage runs).
    ("model", "show", "--json"): _LEAN | {"rich"},
    ("model", "show"): _LEAN,
    ("model", "list"): _LEAN,
    # Reads through store/lean.py (scheduler/history.py: one SQL for both paths).
    ("history", "--json"): _LEAN | {"rich"},
    ("history",): _LEAN,
    # The status snapshot reads the store through store/lean.py, and Redis over a socket of
    # its own (queue/plain.py): redis-py only for a URL it cannot serve (TLS, options).
    ("status", "--json"): _LEAN | {"rich"},
}
"""Per command (its words, with `--json` when it is the scripts' form): the packages it must
not load."""

NOT_ON_SQLITE = frozenset({"psycopg2", "sqlalchemy.dialects.postgresql"})
"""What no command loads on the default SQLite store (a package, or a dotted module)."""
