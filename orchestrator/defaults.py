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

