"""The store on SQLite and PostgreSQL: migrations, the event log's order and its index."""

from __future__ import annotations

import threading
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from orchestrator.store import Store
from orchestrator.store.db import SCHEMA_REVISION
from orchestrator.store.events import last_sequence, read_events, record_event
from orchestrator.store.migrate import alembic_config
from orchestrator.store.models import Base
from tests.conftest import CLI


def test_schema_revision_is_alembic_head() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_REVISION


def test_migrations_build_exactly_the_models(database_url: str) -> None:
    store = Store(database_url)
    try:
        assert store.current_revision() == SCHEMA_REVISION
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        store.dispose()


def test_db_upgrade_command_is_idempotent(
    cli: CLI, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    assert cli("db", "current").out.strip() == "empty"
    assert f"to revision {SCHEMA_REVISION}" in cli("db", "upgrade").err
    assert "up to date" in cli("db", "upgrade").err
    assert cli("db", "current").out.strip() == SCHEMA_REVISION


def test_sqlite_runs_in_wal_mode(retrain_home: object) -> None:
    store = Store(f"sqlite:///{retrain_home}/wal.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.dispose()


def test_reading_events_after_a_cursor_is_an_index_range_scan(database_url: str) -> None:
    store = Store(database_url)
    with store.session() as session:
        for i in range(50):
            record_event(
                session, "dataset.version.created", entity_id=f"{i:032x}", project="p", name="n"
            )
    with store.reader() as session:
        assert [e.seq for e in read_events(session, 10, limit=5)] == [11, 12, 13, 14, 15]
        assert last_sequence(session) == 50
        sql = "SELECT seq FROM events WHERE seq > 10 ORDER BY seq LIMIT 5"
        if store.dialect == "sqlite":
            plan = " ".join(str(r[-1]) for r in session.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "USING INTEGER PRIMARY KEY" in plan, plan
        else:
            # A 50-row table is cheapest to scan whole; forbid that to see the plan an index
            # gives the planner, which is what it picks on a large table.
            session.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(r[0] for r in session.execute(text(f"EXPLAIN {sql}")))
            assert "Index" in plan and "pk_events" in plan, plan
    store.dispose()


def test_postgres_event_sequence_order_is_commit_order(postgres_url: str) -> None:
    """A writer that took sequence N+1 cannot commit before the writer holding N, so a reader
    never sees N+1 without N (the scheduler's cursor would skip N forever)."""
    store = Store(postgres_url)
    first_recorded = threading.Event()
    release_first = threading.Event()
    seqs: dict[str, int] = {}

    def first() -> None:
        with store.session() as session:
            seqs["first"] = record_event(session, "k", entity_id="1", project="p", name="a").seq
            first_recorded.set()
            release_first.wait(30)

    def second() -> None:
        with store.session() as session:
            seqs["second"] = record_event(session, "k", entity_id="2", project="p", name="b").seq

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_recorded.wait(30)
    t2 = threading.Thread(target=second)
    t2.start()
    # The second writer must be waiting on the event lock, not committed.
    deadline = time.monotonic() + 30
    while True:
        with store.engine.connect() as conn:
            waiting = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar()
        if waiting:
            break
        assert time.monotonic() < deadline, "second writer never waited for the first"
        time.sleep(0.01)
    with store.reader() as session:
        assert read_events(session, 0) == []
    release_first.set()
    t1.join(30)
    t2.join(30)
    assert seqs["first"] < seqs["second"]
    with store.reader() as session:
        assert [e.entity_id for e in read_events(session, 0)] == ["1", "2"]
    store.dispose()
