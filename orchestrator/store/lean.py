"""Read-only access to the store through the database driver alone, for commands that must
start fast (`retrain task list` answers in well under the ~300 ms SQLAlchemy's import costs on
a small machine). Queries are written once, in the modules that own them, with `%s`
placeholders, and run here or on the connection under a SQLAlchemy session alike.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orchestrator.store.revision import SCHEMA_REVISION

Row = dict[str, Any]


class Unavailable(Exception):
    """The lean path cannot serve this URL or database; use the full store instead."""


@contextmanager
def connect(url: str) -> Iterator[Any]:
    """A DB-API connection for `url` whose schema is current, else `Unavailable`."""
    conn = _open(url)
    try:
        rows = fetch(conn, "SELECT version_num FROM alembic_version", ())
        if [r["version_num"] for r in rows] != [SCHEMA_REVISION]:
            raise Unavailable("schema is not current")
        yield conn
    except Unavailable:
        raise
    except Exception as exc:  # any driver error: let the full store report it properly
        raise Unavailable(str(exc)) from exc
    finally:
        conn.close()


def _open(url: str) -> Any:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise Unavailable("not a URL")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:" or "?" in path:
            raise Unavailable("unsupported SQLite URL")
        try:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise Unavailable(str(exc)) from exc
    if scheme in ("postgresql", "postgresql+psycopg", "postgres"):
        import psycopg

        try:
            return psycopg.connect(f"postgresql://{rest}", connect_timeout=5)
        except psycopg.Error as exc:
            raise Unavailable(str(exc)) from exc
    raise Unavailable(f"no lean driver for {scheme}")


def fetch(conn: Any, sql: str, params: Sequence[Any]) -> list[Row]:
    """Run `sql` (with `%s` placeholders) and return rows as dicts."""
    if isinstance(conn, sqlite3.Connection):
        sql = sql.replace("%s", "?")
    cursor = conn.cursor()
    try:
        cursor.execute(sql, tuple(params))
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def iso(value: Any) -> str | None:
    """A stored time as ISO 8601 UTC, as the ORM's `UTCDateTime` gives it (`.isoformat()`):
    PostgreSQL's driver returns datetimes, SQLite holds SQLAlchemy's UTC text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return str(value.astimezone(dt.timezone.utc).isoformat())


def json_value(value: Any) -> Any:
    """A JSON column's value: PostgreSQL's driver decodes it, SQLite returns its text."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value
