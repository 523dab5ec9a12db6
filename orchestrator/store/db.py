"""Engines, transactions and schema migrations of the store.

SQLite (the default) runs in WAL mode with a busy timeout, and every write transaction starts
with `BEGIN IMMEDIATE`: the CLI and the scheduler write at the same time, and a deferred
transaction that upgrades from reading to writing fails at once with "database is locked"
instead of waiting. Read-only work uses a separate engine with ordinary deferred transactions,
so readers never queue behind writers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import ServiceUnavailable
from orchestrator.redact import redact_url
from orchestrator.store.events import WROTE_EVENTS
from orchestrator.store.lean import SQLITE_BUSY_TIMEOUT_MS, SQLITE_PRAGMAS
from orchestrator.store.revision import SCHEMA_REVISION


def driver_url(url: str) -> str:
    """`url` naming the PostgreSQL driver retrain ships, psycopg2, where it names none.

    SQLAlchemy 2.1 reads a plain postgresql:// as psycopg 3, whose import costs about 100 ms
    more than psycopg2's (its adapters, asyncio, importlib.metadata), which every command on
    PostgreSQL would pay before its first query."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(False)
    return url


class Store:
    """The database behind retrain. Create one per process and share it."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.safe_url = redact_url(url)
        url = driver_url(url)
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            self._prepare_sqlite_path(parsed.database)
        self.engine = self._make_engine(url, immediate=True)
        self.read_engine = (
            self._make_engine(url, immediate=False) if self.dialect == "sqlite" else self.engine
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.on_events_committed: list[Callable[[], None]] = []
        """Called after a commit that wrote events (the scheduler's wake-up publisher)."""
        event.listen(self._sessions, "after_commit", self._after_commit)
        event.listen(self._sessions, "after_rollback", self._after_rollback_clear)
        self._readers = sessionmaker(self.read_engine, expire_on_commit=False)
        if migrate:
            self.ensure_schema()

    # -- engines ---------------------------------------------------------------------------

    def _prepare_sqlite_path(self, database: str | None) -> None:
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    def _make_engine(self, url: str, *, immediate: bool) -> Engine:
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        # No pool_pre_ping: it costs a round trip per transaction (the scheduler's hot path).
        # A connection the server dropped fails its statement instead; the pool discards it,
        # and the scheduler's loop retries the step on its next iteration.
        engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(engine, immediate=immediate)
        return engine

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(WROTE_EVENTS, False):
            for callback in self.on_events_committed:
                callback()

    def _after_rollback_clear(self, session: Session) -> None:
        session.info.pop(WROTE_EVENTS, None)

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self._connect_errors(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session; nothing it does is committed. Objects loaded in it stay
        readable after the block (closing detaches them without expiring them)."""
        with self._connect_errors(), self._readers() as session:
            yield session

    @contextmanager
    def _connect_errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            if _is_connection_error(exc):
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise ServiceUnavailable(
                    f"cannot use the database {self.safe_url}: {reason}"
                ) from None
            raise

    # -- schema ----------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        with self._connect_errors(), self.engine.connect() as conn:
            return _read_revision(conn)

    def ensure_schema(self) -> None:
        """Apply pending migrations. Cheap when up to date: one query, no Alembic import."""
        if self.current_revision() != SCHEMA_REVISION:
            self.upgrade()

    def upgrade(self, revision: str = "head") -> None:
        """Run Alembic migrations up to `revision` (what `retrain db upgrade` does)."""
        from sqlalchemy.exc import DBAPIError

        from orchestrator.store.migrate import upgrade

        with self._connect_errors():
            try:
                upgrade(self.engine, revision)
            except DBAPIError as exc:
                if isinstance(exc, OperationalError) and _is_connection_error(exc):
                    raise
                # The server refused the schema itself: a role without CREATE on its schema,
                # a search_path naming none. Not retrain's fault, and not a traceback.
                reason = str(exc.orig or exc).strip().splitlines()[0]
                raise ServiceUnavailable(
                    f"cannot create retrain's tables in the database {self.safe_url}: {reason}"
                ) from None

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def _configure_sqlite(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so that our BEGIN below is the one used.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:  # the same settings as the bare-driver writer's
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _read_revision(conn: Any) -> str | None:
    try:
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except Exception as exc:  # the table does not exist yet: a fresh database
        if isinstance(exc, OperationalError) and _is_connection_error(exc):
            raise
        conn.rollback()
        return None
    return str(row[0]) if row else None


def _is_connection_error(exc: OperationalError) -> bool:
    message = str(exc.orig or exc).lower()
    markers = (
        "could not connect",
        "connection refused",
        "unable to open database",
        "could not translate host",
        "connection failed",
        "does not exist",
        "timeout expired",
        "password authentication failed",
        "name or service not known",
    )
    return any(marker in message for marker in markers)
