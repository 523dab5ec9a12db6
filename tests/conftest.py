"""Shared fixtures: an isolated RETRAIN_HOME per test, real databases, and a CLI driver.

PostgreSQL tests use `RETRAIN_TEST_POSTGRES_URL` (a server where we may create databases);
each test gets a database of its own, dropped afterwards. With `CI` set, a missing URL is a
failure, not a skip: CI must prove the PostgreSQL path.

The suite leaves no process behind. Every process a test starts is tagged: it inherits
`RETRAIN_TEST_PROCESS` (this session's id and the test's), or it runs in or names the test's
tmp_path (redis-server overwrites its environment with its title, but runs in its data
directory). After each test, a tagged process still alive (after a grace) is killed and named,
and the session fails; at the end of the session one more scan catches anything tagged by
this session. Parent pid 1 does not hide an orphan, and the session id keeps another
engineer's or another session's processes on a shared machine out of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

pytest_plugins = ["tests.s3server"]

POSTGRES_ENV = "RETRAIN_TEST_POSTGRES_URL"
PROCESS_TAG_ENV = "RETRAIN_TEST_PROCESS"
SESSION = uuid.uuid4().hex
LEFTOVER_GRACE_S = float(os.environ.get("RETRAIN_TEST_LEFTOVER_GRACE_S", "30"))
"""How long a process a test started may take to exit after the test (a daemon finishing its
shutdown on a loaded machine) before it counts as left behind."""

leftovers: list[str] = []
basetemps: set[Path] = set()


@pytest.fixture(autouse=True)
def retrain_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test starts from an empty home and no RETRAIN_* settings from the outside, and
    leaves no process behind (see the module docstring)."""
    for name in list(os.environ):
        if name.startswith("RETRAIN_") and not name.startswith("RETRAIN_TEST_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("RETRAIN_HOME", str(home))
    if os.geteuid() == 0:
        # The suite runs as root on CI machines, in pytest's folders only root may enter, so
        # its workers run jobs as root, which they do only when told (tests/security/
        # test_root_jobs.py drops this to see the refusal).
        monkeypatch.setenv("RETRAIN_ALLOW_ROOT", "1")
    monkeypatch.setenv(PROCESS_TAG_ENV, f"{SESSION}:{uuid.uuid4().hex}")
    tag = os.environ[PROCESS_TAG_ENV]
    basetemps.add(tmp_path.parent)
    monkeypatch.chdir(tmp_path)
    yield home
    if (home / "redis.json").exists():
        # The embedded Redis outlives the command that started it by design (later commands
        # find it); stopping it is the harness's part, as `retrain redis stop` is a user's.
        from orchestrator.queue.connection import stop_embedded
        from orchestrator.settings import Settings

        with monkeypatch.context() as m:
            for name in list(os.environ):  # whatever settings the test tried, this home's
                if name.startswith("RETRAIN_") and not name.startswith("RETRAIN_TEST_"):
                    m.delenv(name)
            m.setenv("RETRAIN_HOME", str(home))
            stop_embedded(Settings.load())
    leftovers.extend(_kill_left_behind(lambda pid: tagged(pid, tag, tmp_path)))


def started_here(folder: Path) -> list[int]:
    """Live processes the running test started (see the module docstring), for tests that
    check that something stopped everything it started."""
    tag = os.environ[PROCESS_TAG_ENV]
    return [pid for pid in processes() if tagged(pid, tag, folder)]


def processes() -> Iterator[int]:
    """Every other live (not zombie) process we may look at."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError, IndexError):
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                yield int(entry.name)


def tagged(pid: int, tag: str, folder: Path | None) -> bool:
    """Whether `pid` carries `tag` (a prefix of the tag value) in its environment, or runs
    in, or names in its command line, `folder`."""
    proc = Path(f"/proc/{pid}")
    with contextlib.suppress(OSError):
        if f"{PROCESS_TAG_ENV}={tag}".encode() in (proc / "environ").read_bytes():
            return True
    if folder is None:
        return False
    inside = str(folder).encode()
    with contextlib.suppress(OSError):
        cwd = os.readlink(proc / "cwd").encode()
        if cwd == inside or cwd.startswith(inside + b"/"):
            return True
    with contextlib.suppress(OSError):
        argv = (proc / "cmdline").read_bytes()
        return inside + b"/" in argv or inside + b"\0" in argv
    return False


def _describe(pid: int) -> str:
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        return f"pid {pid}: {cmdline.decode(errors='replace').strip()}"
    return f"pid {pid}"


def _kill_left_behind(tagged: Callable[[int], bool]) -> list[str]:
    """Processes for which `tagged(pid)` holds that outlive the grace: killed, described."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while True:
        found = [pid for pid in processes() if tagged(pid)]
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = [_describe(pid) for pid in found]
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)
    return described


def pytest_sessionstart(session: pytest.Session) -> None:
    # Processes started outside any test (session fixtures) are tagged with the session.
    os.environ[PROCESS_TAG_ENV] = f"{SESSION}:session"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process started by this session is still alive."""
    found = leftovers + _kill_left_behind(
        lambda pid: tagged(pid, SESSION, None)
        or any(tagged(pid, SESSION, folder) for folder in basetemps)
    )
    if not found:
        return
    writer = session.config.get_terminal_writer()
    writer.line()
    writer.line(f"processes started by the tests were left running (now killed): {len(found)}",
                red=True, bold=True)
    for line in found:
        writer.line(f"  {line}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    from benchmarks.bench_tasks import admin_sql

    server = make_url(postgres_server_url())
    name = f"retrain_test_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql").render_as_string(False)
    admin_sql(admin, f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(False)
    finally:
        admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture
def machine_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The machine's Redis (`RETRAIN_TEST_REDIS_URL`, a database the tests may flush), flushed
    before and after the test and set as `RETRAIN_REDIS_URL`; yields its URL."""
    import redis

    from tests.tasks.conftest import machine_redis_url

    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def runtime(
    database_url: str, machine_redis: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A `Runtime` on the test's store (SQLite and PostgreSQL) and the machine's Redis."""
    from orchestrator.runtime import Runtime

    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    rt = Runtime()
    try:
        yield rt
    finally:
        rt.close()
