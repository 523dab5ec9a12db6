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
