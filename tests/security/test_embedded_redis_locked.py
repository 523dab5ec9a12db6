"""The embedded Redis is locked: a job cannot use it (issue 10, F1).

Landlock does not govern `connect()` to a pathname unix socket, and a job runs as the worker's
user: it can reach the embedded server's socket. So the server requires a password (kept in
the worker's home, which the sandbox hides; never on its command line), and the commands that
would turn a Redis client into the worker's user (MODULE LOAD, CONFIG SET dir + SAVE, DEBUG,
replication) do not exist on it, even for a client that has the password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from orchestrator.errors import ServiceUnavailable
from orchestrator.queue import keys
from orchestrator.queue.connection import embedded_url, stop_embedded
from orchestrator.settings import Settings, ensure_worker_secret
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git
from workers import sandbox

git_repo = task_fixtures.git_repo

REFUSED_COMMANDS = [
    ("MODULE", "LOAD", "/tmp/evil.so"),
    ("MODULE", "LIST"),
    ("CONFIG", "SET", "dir", "/tmp"),
    ("CONFIG", "GET", "requirepass"),
    ("DEBUG", "SLEEP", "0"),
    ("SLAVEOF", "127.0.0.1", "1"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("MIGRATE", "127.0.0.1", "1", "k", "0", "1000"),
    ("SHUTDOWN", "NOSAVE"),
]


def socket_of(url: str) -> str:
    """The socket path of a `unix://[:password@]/path` URL."""
    return redis.connection.parse_url(url)["path"]


def server_pid(home: Path) -> int:
    return int(json.loads((home / "redis.json").read_text())["pid"])


def test_the_embedded_server_needs_a_password_that_ps_does_not_show(
    retrain_home: Path,
) -> None:
    settings = Settings.load()
    url = embedded_url(settings, start=True)
    assert url is not None
    path = socket_of(url)
    anonymous = redis.Redis(unix_socket_path=path)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()

    password_file = retrain_home / "redis" / "password"
    password = password_file.read_text().strip()
    assert len(password) >= 32
    assert password_file.stat().st_mode & 0o777 == 0o600
    command_line = Path(f"/proc/{server_pid(retrain_home)}/cmdline").read_bytes()
    assert password.encode() not in command_line
    assert password not in (retrain_home / "redis.json").read_text()
    assert password not in (retrain_home / "redis" / "redis.log").read_text()

    client = redis.Redis.from_url(url)
    assert client.ping()
    for command in REFUSED_COMMANDS:
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command)
    assert client.ping()  # SHUTDOWN did nothing
    client.close()


def test_the_cli_uses_the_password_and_never_shows_it(cli: CLI, retrain_home: Path) -> None:
    url = embedded_url(Settings.load(), start=True)
    assert url is not None
    password = (retrain_home / "redis" / "password").read_text().strip()
    shown = cli("redis", "status")
    assert password not in shown.out + shown.err
    assert socket_of(url) in shown.out
    # `retrain status` (which reads redis.json without the full settings) gets in, and says
    # where it went without the password.
    shown = cli("status", "--json")
    assert password not in shown.out + shown.err
    status = json.loads(shown.out)
    assert status["redis"]["reachable"] is True, status["redis"]
    assert socket_of(url) in status["redis"]["url"]


def _old_server(retrain_home: Path) -> tuple[int, Path]:
    """A password-less redis-server for this home, as retrain before the lock started it,
    holding the key `kept`; (its pid, its socket)."""
    from orchestrator.queue.connection import redis_server_binary

    data = retrain_home / "redis"
    data.mkdir(parents=True)
    sock = data / "redis.sock"
    pidfile = data / "redis.pid"
    subprocess.run(
        [str(redis_server_binary()), "--port", "0", "--unixsocket", str(sock),
         "--unixsocketperm", "700", "--dir", str(data), "--appendonly", "yes", "--save", "",
         "--daemonize", "yes", "--pidfile", str(pidfile), "--logfile", str(data / "redis.log")],
        check=True, timeout=30, stdin=subprocess.DEVNULL)
    old = redis.Redis(unix_socket_path=str(sock))
    deadline = time.monotonic() + 60
    while True:
        try:
            old.set("kept", "yes")
            old_pid = int(pidfile.read_text().strip() or 0)
            if old_pid:
                break
        except (redis.ConnectionError, OSError):
            pass
        assert time.monotonic() < deadline, "the password-less redis-server did not start"
        time.sleep(0.05)
    old.close()
    (retrain_home / "redis.json").write_text(
        json.dumps({"pid": old_pid, "url": f"unix://{sock}"}))

    return old_pid, sock


def test_a_password_less_server_from_an_older_version_is_restarted_locked(
    retrain_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A home whose redis.json names a running server started without a password (retrain
    before this change): the next start stops it (its append-only file keeps the data) and
    starts a locked one in its place."""
    old_pid, _sock = _old_server(retrain_home)

    settings = Settings.load()
    url = embedded_url(settings, start=True)
    assert url is not None
    assert server_pid(retrain_home) != old_pid
    assert f"restarted the embedded Redis of {retrain_home} with a password (pid {old_pid}" \
        in capsys.readouterr().err
    assert not Path(f"/proc/{old_pid}").exists() or b"redis" not in Path(
        f"/proc/{old_pid}/cmdline").read_bytes()
    anonymous = redis.Redis(unix_socket_path=socket_of(url))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    client = redis.Redis.from_url(url)
    assert client.get("kept") == b"yes"
    client.close()
    assert stop_embedded(settings)


def test_a_password_less_server_still_in_use_is_not_restarted_under_its_users(
    retrain_home: Path,
) -> None:
    """New-user pass: an older `retrain up` still running on the home (its scheduler and
    workers connected) was taken down by the first new command, which restarted its Redis
    with a password under it. While anything is connected, the new command refuses with a
    one-line error and leaves the server, its data and its users alone."""
    old_pid, sock = _old_server(retrain_home)
    user = redis.Redis(unix_socket_path=str(sock))
    user.ping()  # an older retrain's daemon, connected
    settings = Settings.load()
    try:
        with pytest.raises(ServiceUnavailable, match="still in use"):
            embedded_url(settings, start=True)
        assert Path(f"/proc/{old_pid}").exists()
        assert user.get("kept") == b"yes"
    finally:
        user.close()
    url = embedded_url(settings, start=True)  # nothing connected now: restarted locked
    assert url is not None and server_pid(retrain_home) != old_pid
    assert stop_embedded(settings)


ATTACK = r"""
import json, os, pathlib, socket

targets = json.loads(os.environ["TARGETS"])
result = {}

def command(*words):
    out = b"*%d\r\n" % len(words)
    for word in words:
        data = word.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out

def attempt(name, *words):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(targets["socket"])
            conn.sendall(command(*words))
            result[name] = conn.recv(4096).decode(errors="replace").strip()
    except Exception as exc:
        result[name] = type(exc).__name__

attempt("ping", "PING")
attempt("keys", "KEYS", "*")
attempt("module load", "MODULE", "LOAD", "/tmp/evil.so")
attempt("config set", "CONFIG", "SET", "dir", "/tmp")
attempt("auth guess", "AUTH", "retrain")
try:
    result["password"] = "read " + pathlib.Path(targets["password"]).read_text()[:4]
except Exception as exc:
    result["password"] = type(exc).__name__
print("RESULT " + json.dumps(result))
"""


@pytest.mark.skipif(sandbox.landlock_abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")
def test_a_job_cannot_use_the_embedded_redis(
    cli: CLI, git_repo: Repo, retrain_home: Path
) -> None:
    """A real worker on the embedded Redis (SQLite store, sandbox auto) runs a job that goes
    for the server's socket (an attacker can guess where it is; the test hands it over)."""
    assert "RETRAIN_REDIS_URL" not in os.environ
    secret = ensure_worker_secret(retrain_home)
    (git_repo.path / "train.py").write_text(ATTACK)
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "an attacker's training script")
    settings = Settings.load()
    url = embedded_url(settings, start=True)
    assert url is not None
    targets = {"socket": socket_of(url), "password": str(retrain_home / "redis" / "password")}
    task = cli("task", "create", "--project", "p", "--name", "attack", "--repo",
               str(git_repo.path), "--script", "train.py", "--queue", "gpu", "--env",
               "TARGETS=" + json.dumps(targets)).out.strip()
    run = cli("task", "run", task).out.strip()
    worker = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env={**os.environ, "RETRAIN_WORKER_SECRET": secret},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = worker.communicate(timeout=170)
    assert worker.returncode == 0, err
    client = redis.Redis.from_url(url)
    lines = [e[1][b"line"].decode() for e in client.xrange(keys.logs_stream(run))]
    client.close()
    found = [line for line in lines if line.startswith("RESULT ")]
    assert found, lines
    result = json.loads(found[-1][len("RESULT "):])
    for name in ("ping", "keys"):
        assert result[name].startswith("-NOAUTH"), (name, result)
    # A locked command is unknown before the password is even asked for.
    for name in ("module load", "config set"):
        assert result[name].startswith(("-NOAUTH", "-ERR unknown command")), (name, result)
    assert result["auth guess"].startswith("-WRONGPASS"), result
    assert result["password"] == "PermissionError", result
