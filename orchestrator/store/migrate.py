"""Alembic, driven from code: `Store.ensure_schema()` and `retrain db upgrade` call this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import text

if TYPE_CHECKING:
    from orchestrator.store.db import Store

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(store: Store, revision: str = "head") -> None:
    """Upgrade the schema in one transaction. Two processes that both find a fresh database
    take turns: SQLite's BEGIN IMMEDIATE and a PostgreSQL advisory lock serialize them, and the
    second finds nothing left to do."""
    from orchestrator.store.db import MIGRATION_LOCK_ID

    config = alembic_config()
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
