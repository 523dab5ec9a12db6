"""Alembic, driven from code: `Store.ensure_schema()` and `retrain db upgrade` call this.

It is handed an engine, never the `Store`: `orchestrator.store.db` imports this module (on
first use), and this module imports nothing of it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_ID = 0x7265_7472  # "retr": serializes concurrent first-use migrations on PostgreSQL


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema in one transaction. Two processes that both find a fresh database
    take turns: SQLite's BEGIN IMMEDIATE and a PostgreSQL advisory lock serialize them, and the
    second finds nothing left to do."""
    config = alembic_config()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
