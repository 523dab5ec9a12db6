"""The schema revision this code expects, importable without SQLAlchemy or Alembic."""

SCHEMA_REVISION = "0011"
"""The newest migration; a test checks it is Alembic's head, so it cannot drift."""
