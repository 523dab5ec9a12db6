"""Settings from RETRAIN_* variables, and `retrain config show` hiding every secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import Settings
from tests.conftest import CLI


def test_defaults_live_under_home(retrain_home: Path) -> None:
    settings = Settings.load()
    assert settings.home == retrain_home
    assert settings.database_url == f"sqlite:///{retrain_home / 'retrain.db'}"
    assert settings.storage_url == (retrain_home / "storage").as_uri()
    assert settings.resolved_cache_dir == retrain_home / "cache"
    assert settings.redis_url is None


def test_config_show_redacts_passwords(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", "postgresql://retrain:pg-s3cret@db:5432/retrain")
    monkeypatch.setenv("RETRAIN_REDIS_URL", "redis://:redis-s3cret@cache:6379/0")
    monkeypatch.setenv("RETRAIN_STORAGE_URL", "s3://models/retrain")
    monkeypatch.setenv("RETRAIN_S3_ENDPOINT_URL", "https://minio.local:9000")
    shown = cli.json("config", "show")
    assert shown["RETRAIN_DATABASE_URL"] == "postgresql://retrain:***@db:5432/retrain"
    assert shown["RETRAIN_REDIS_URL"] == "redis://:***@cache:6379/0"
    assert shown["RETRAIN_STORAGE_URL"] == "s3://models/retrain"
    table = cli("config", "show").out
    assert "s3cret" not in table and "minio.local:9000" in table


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RETRAIN_REDIS_URL", "http://cache", "RETRAIN_REDIS_URL"),
        ("RETRAIN_S3_ENDPOINT_URL", "minio:9000", "RETRAIN_S3_ENDPOINT_URL"),
        ("RETRAIN_STORAGE_URL", "s3://", "names no bucket"),
        ("RETRAIN_DATABASE_URL", "not a url", "RETRAIN_DATABASE_URL"),
        # A driver retrain does not ship was a traceback from SQLAlchemy on first use.
        ("RETRAIN_DATABASE_URL", "postgresql+asyncpg://u@db/r", "driver 'asyncpg'"),
        ("RETRAIN_DATABASE_URL", "postgresql+psycopg://u@db/r", "driver 'psycopg'"),
    ],
)
def test_bad_values_are_config_errors(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    assert message in cli("config", "show", expect=2).err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:////srv/retrain/retrain.db", "sqlite:////srv/retrain/retrain.db"),
        (
            "postgresql://u:pw@db:5432/r?sslmode=require",
            "postgresql://u:***@db:5432/r?sslmode=require",
        ),
        ("redis://h/0?password=pw", "redis://h/0?password=***"),
    ],
)
def test_redaction_changes_only_the_secret(url: str, shown: str) -> None:
    from orchestrator.redact import redact_url

    assert redact_url(url) == shown


@pytest.mark.parametrize("command", [["task", "show", "x"], ["task", "show", "x", "--json"],
                                     ["dataset", "search"], ["model", "list"],
                                     ["task", "list"], ["task", "list", "--json"],
                                     ["task", "run", "p/t"], ["history", "--json"],
                                     ["status", "--json"], ["dataset", "show", "x"],
                                     ["dataset", "tag", "x", "y"]])
def test_fast_commands_check_settings_as_every_command_does(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """New-user pass: `task show` on its lean path read an existing store without checking
    the settings (a bad number was ignored, a `postgres://` URL used)."""
    cli("dataset", "create", "--project", "p", "--name", "d")  # a store the lean path can read
    monkeypatch.setenv("RETRAIN_HEARTBEAT_TTL_S", "abc")
    err = cli(*command, expect=2).err
    assert err.startswith("retrain: error: ") and "RETRAIN_HEARTBEAT_TTL_S" in err, err


def test_a_previous_release_driver_url_is_refused_with_the_url_to_use(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New-user pass, round 2: `postgresql+psycopg://` was the driver the previous release
    shipped. The refusal names the URL to set instead (password hidden), not `...`."""
    monkeypatch.setenv("RETRAIN_DATABASE_URL", "postgresql+psycopg://u:pw-s3cret@db:5432/r")
    err = cli("config", "show", expect=2).err
    assert "RETRAIN_DATABASE_URL=postgresql://u:***@db:5432/r" in err
    assert "s3cret" not in err
    assert "psycopg2" in err


@pytest.mark.parametrize("command", [["strat"], ["redis", "strat"], ["model", "shwo"]])
def test_a_mistyped_command_is_suggested_once(cli: CLI, command: list[str]) -> None:
    """New-user pass, round 2: click (8.2 and later) and typer both added their suggestion:
    `Did you mean 'status'? Did you mean 'status'?`."""
    err = cli(*command, expect=2).err
    assert err.count("Did you mean") == 1, err
