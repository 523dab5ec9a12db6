"""The store through the database driver alone, for commands that must start fast (`retrain
task list` answers in well under the ~300 ms SQLAlchemy's import costs on a small machine).
Queries are written once, in the modules that own them, with `%s` placeholders, and run here
or on the connection under a SQLAlchemy session alike.

`connect` reads; `writer` is one write transaction, with the SQLite settings the full store
uses (`SQLITE_PRAGMAS`, `BEGIN IMMEDIATE`). Both answer `Unavailable` for anything unusual (a
schema that is not current, a fresh database, a URL they do not know) before touching the
data, and the caller then goes through the full store, which migrates or explains.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from orchestrator.errors import RetrainError
from orchestrator.store.revision import SCHEMA_REVISION

Row = dict[str, Any]

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)
"""Every SQLite connection that writes the store (this module's and SQLAlchemy's) runs these."""


class Unavailable(Exception):
    """The lean path cannot serve this URL or database; use the full store instead."""


@contextmanager
def connect(url: str) -> Iterator[Any]:
    """A DB-API connection for `url` whose schema is current, else `Unavailable`."""
    conn = _open(url)
    try:
        _check_revision(conn)
        yield conn
    except (Unavailable, RetrainError):  # the block's own answer (a NotFound, say)
        raise
    except Exception as exc:  # any driver error: let the full store report it properly
        raise Unavailable(str(exc)) from exc
    finally:
        conn.close()


@contextmanager
def writer(url: str) -> Iterator[Any]:
    """One write transaction on the bare driver: committed when the block ends, rolled back
    if it raises. `Unavailable` comes only before the block runs (nothing written yet), so
    the caller can do the same work through the full store instead; inside the block, errors
    are the block's own."""
    conn = _open(url, write=True)
    try:
        try:
            if isinstance(conn, sqlite3.Connection):
                for pragma in SQLITE_PRAGMAS:
                    conn.execute(pragma)
            _check_revision(conn)
            if isinstance(conn, sqlite3.Connection):
                conn.execute("BEGIN IMMEDIATE")
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(str(exc)) from exc
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        conn.close()


def _check_revision(conn: Any) -> None:
    rows = fetch(conn, "SELECT version_num FROM alembic_version", ())
    if [r["version_num"] for r in rows] != [SCHEMA_REVISION]:
        raise Unavailable("schema is not current")
    if not isinstance(conn, sqlite3.Connection):
        conn.rollback()  # end the transaction the check opened (a writer starts its own)


def _open(url: str, *, write: bool = False) -> Any:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise Unavailable("not a URL")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:" or "?" in path:
            raise Unavailable("unsupported SQLite URL")
        # mode=rw: a database that does not exist yet is the full store's to create.
        mode = "rw" if write else "ro"
        try:
            return sqlite3.connect(
                f"file:{quote(path)}?mode={mode}",
                uri=True,
                timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # transactions are ours: BEGIN IMMEDIATE in `writer`
            )
        except sqlite3.Error as exc:
            raise Unavailable(str(exc)) from exc
    if scheme in ("postgresql", "postgresql+psycopg2", "postgres"):
        import psycopg2

        try:
            return psycopg2.connect(f"postgresql://{rest}", connect_timeout=5)
        except psycopg2.Error as exc:
            raise Unavailable(str(exc)) from exc
    raise Unavailable(f"no lean driver for {scheme}")


def is_integrity_error(exc: BaseException) -> bool:
    """A driver's IntegrityError (a unique or foreign key violated), from either driver."""
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    psycopg2 = sys.modules.get("psycopg2")
    return psycopg2 is not None and isinstance(exc, psycopg2.IntegrityError)


def is_sqlite(conn: Any) -> bool:
    return isinstance(conn, sqlite3.Connection)


def execute(conn: Any, sql: str, params: Sequence[Any]) -> int:
    """Run a statement (with `%s` placeholders); returns the rows it changed."""
    if isinstance(conn, sqlite3.Connection):
        sql = sql.replace("%s", "?")
    cursor = conn.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return int(cursor.rowcount)
    finally:
        cursor.close()


def executemany(conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        return
    if isinstance(conn, sqlite3.Connection):
        sql = sql.replace("%s", "?")
    cursor = conn.cursor()
    try:
        cursor.executemany(sql, [tuple(r) for r in rows])
    finally:
        cursor.close()


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


def add_tags(conn: Any, record: Row, wanted: Sequence[str], insert_sql: str) -> list[str]:
    """Insert the tags of `wanted` that `record` lacks (`insert_sql` takes the record's id and
    a tag) and keep `record["tags"]` sorted; the ones added, in order."""
    added = [t for t in wanted if t not in record["tags"]]
    if added:
        executemany(conn, insert_sql, [(record["id"], t) for t in added])
        record["tags"] = sorted([*record["tags"], *added])
    return added


def remove_tags(
    conn: Any, record: Row, tags: Iterable[str], delete_sql: str, owner: str
) -> list[str]:
    """Delete `tags` from `record` (`delete_sql` takes the record's id and a tag) and keep
    `record["tags"]` in order; the ones removed, sorted. Naming none, or one the record lacks
    (likely a typo), is an error naming `owner` and its tags, nothing deleted."""
    from orchestrator.errors import UserError

    unwanted = sorted(set(tags))
    if not unwanted:
        raise UserError("name at least one tag")
    absent = [t for t in unwanted if t not in record["tags"]]
    if absent:
        have = ", ".join(record["tags"]) or "none"
        raise UserError(f"{owner} has no tag {', '.join(absent)} (its tags: {have})")
    executemany(conn, delete_sql, [(record["id"], t) for t in unwanted])
    record["tags"] = [t for t in record["tags"] if t not in unwanted]
    return unwanted


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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def stamp(conn: Any, value: dt.datetime) -> Any:
    """A UTC time as the ORM's `UTCDateTime` stores it: SQLite holds SQLAlchemy's text form
    (ordered as text, so it must be exactly that form), PostgreSQL takes the datetime."""
    value = value.astimezone(dt.timezone.utc)
    if isinstance(conn, sqlite3.Connection):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def json_time(value: Any) -> str | None:
    """A stored time as pydantic writes a UTC datetime in JSON (`...T12:00:00.5Z`)."""
    text = iso(value)
    return text[:-6] + "Z" if text is not None and text.endswith("+00:00") else text


def json_value(value: Any) -> Any:
    """A JSON column's value: PostgreSQL's driver decodes it, SQLite returns its text."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value
