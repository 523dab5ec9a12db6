"""Shared fixtures: an isolated RETRAIN_HOME per test, real databases, and a CLI driver.

PostgreSQL tests use `RETRAIN_TEST_POSTGRES_URL` (a server where we may create databases);
each test gets a database of its own, dropped afterwards. With `CI` set, a missing URL is a
failure, not a skip: CI must prove the PostgreSQL path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

pytest_plugins = ["tests.s3server"]

POSTGRES_ENV = "RETRAIN_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def retrain_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts from an empty home and no RETRAIN_* settings from the outside."""
    for name in list(os.environ):
        if name.startswith("RETRAIN_") and not name.startswith("RETRAIN_TEST_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("RETRAIN_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def postgres_server_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set; CI must run the PostgreSQL tests")
        pytest.skip(f"set {POSTGRES_ENV} to run PostgreSQL tests")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test."""
    import psycopg

    server = make_url(postgres_server_url())
    name = f"retrain_test_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, retrain_home: Path) -> str:
    """Each store test runs on the embedded default (SQLite) and on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{retrain_home / 'retrain.db'}"
    return str(request.getfixturevalue("postgres_url"))


@dataclass
class Result:
    code: int
    out: str
    err: str


class CLI:
    """Drives the real `retrain` entry point in-process (argv parsing, error policy, exit
    codes), with the environment the test set up."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str, expect: int = 0) -> Result:
        from orchestrator.cli import main

        self.capsys.readouterr()
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = self.capsys.readouterr()
        result = Result(code, captured.out, captured.err)
        assert "Traceback" not in result.err, result.err
        assert code == expect, f"retrain {' '.join(args)} exited {code}:\n{result.err}"
        return result

    def json(self, *args: str) -> object:
        import json

        return json.loads(self(*args, "--json").out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(capsys)
