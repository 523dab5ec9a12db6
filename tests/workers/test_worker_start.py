"""`retrain worker` start-up: the GPUs are asked for once (each `nvidia-smi` run costs a busy
GPU host a good part of a second before the worker is advertised)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.tasks.conftest import machine_redis_url


def test_a_worker_runs_nvidia_smi_once_before_it_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "nvidia-smi.calls"
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        f"#!/bin/sh\necho run >> {calls}\nprintf '0, GPU-00000000-fake, NVIDIA H200, 143771\\n'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a private place for this test's GPU locks
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
             "--queue", "gpu", "--gpus", "all", "--name", "w1", "--burst"],
            env=os.environ.copy(), capture_output=True, text=True, timeout=110,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "w1-gpu0" in done.stderr  # it served GPU 0, as nvidia-smi said
    finally:
        client.flushdb()
        client.close()
    assert calls.read_text().splitlines() == ["run"]


def _worker(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--name", name, "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_worker_name_left_by_a_dead_worker_is_taken_over_and_a_live_one_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New-user pass: after `retrain redis stop` (or a worker killed outright) RQ's record of
    the worker stays in Redis for its TTL, and for about two minutes every `retrain up` and
    `retrain worker --name` of that name died with a traceback ("There exists an active worker
    named 'vm-up1' already"). A record whose process is gone from this host is the worker's
    own leftover and is taken over; one of a live worker is a one-line error, exit 2."""
    import socket

    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        client.hset("rq:worker:w-stale", mapping={
            "hostname": socket.gethostname(), "pid": str(gone.pid), "birth": "2026-12-02"})
        client.expire("rq:worker:w-stale", 300)
        done = _worker("w-stale")
        assert done.returncode == 0, done.stderr
        client.hset("rq:worker:w-live", mapping={
            "hostname": "another-host", "pid": "4242", "birth": "2026-12-02"})
        client.expire("rq:worker:w-live", 300)
        done = _worker("w-live")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert "a worker named 'w-live' is already running (host another-host" in done.stderr
    finally:
        client.flushdb()
        client.close()
