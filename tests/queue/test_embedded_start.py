"""Starting the embedded Redis: redis-server creates its pid file before it writes the pid
into it, and `retrain up` once read it in between (`ValueError: invalid literal for int()`,
seen failing the demo in CI). A stand-in server that leaves the file empty for a while must
be waited for, not crash the start; one that never writes a pid is a one-line error."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import ServiceUnavailable
from orchestrator.queue import connection

FAKE_SERVER = """#!/bin/sh
# Stands in for redis-server --daemonize yes: creates the socket path and an EMPTY pid file,
# exits at once, and writes the pid only a moment later, from the background.
while [ $# -gt 0 ]; do
  case "$1" in
    --pidfile) pidfile="$2"; shift ;;
    --unixsocket) socket="$2"; shift ;;
  esac
  shift
done
: > "$pidfile"
: > "$socket"
if [ -n "$FAKE_PID" ]; then
  ( sleep 0.5; printf '%s\\n' "$FAKE_PID" > "$pidfile" ) </dev/null >/dev/null 2>&1 &
fi
exit 0
"""


@pytest.fixture
def fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    binary = tmp_path / "redis-server"
    binary.write_text(FAKE_SERVER)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(connection, "redis_server_binary", lambda: binary)
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_an_empty_pid_file_is_waited_for(
    fake_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process of our own stands for the server (a home's clean-up signals the pid it records).
    server = subprocess.Popen(["sleep", "300"])
    try:
        monkeypatch.setenv("FAKE_PID", str(server.pid))
        state = fake_server / connection.STATE_FILE
        url = connection._start(fake_server, state)
        assert url.startswith("unix://"), url
        recorded = json.loads(state.read_text())
        assert recorded["pid"] == server.pid
        assert url.endswith("@" + recorded["url"].removeprefix("unix://")), (url, recorded)
    finally:
        server.kill()
        server.wait()


def test_a_pid_that_never_comes_is_a_clear_error(
    fake_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAKE_PID", raising=False)
    monkeypatch.setattr(connection, "START_TIMEOUT_S", 1.0)
    state = fake_server / connection.STATE_FILE
    with pytest.raises(ServiceUnavailable, match="the embedded Redis did not start"):
        connection._start(fake_server, state)
    assert not state.exists()
