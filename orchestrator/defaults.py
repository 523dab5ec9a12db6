"""Default locations, in one place and importable in a few milliseconds (no pydantic), so
that fast commands and `Settings` agree on where things live."""

from __future__ import annotations

import os
from pathlib import Path

ENV_PREFIX = "RETRAIN_"


def default_home() -> Path:
    """The per-user data directory, e.g. `~/.local/share/retrain` on Linux."""
    import platformdirs

    return Path(platformdirs.user_data_dir("retrain", appauthor=False))


def home_from_env() -> Path:
    value = os.environ.get(f"{ENV_PREFIX}HOME")
    return Path(value).expanduser().absolute() if value else default_home()


def default_database_url(home: Path) -> str:
    return f"sqlite:///{home / 'retrain.db'}"


def database_url_from_env() -> str:
    """RETRAIN_DATABASE_URL, or the default SQLite file under RETRAIN_HOME (unvalidated: the
    caller falls back to `Settings` when the URL is not one it can use as it is)."""
    return os.environ.get(f"{ENV_PREFIX}DATABASE_URL") or default_database_url(home_from_env())
