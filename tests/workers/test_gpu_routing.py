"""Jobs reach only slots with the GPUs they need, and a worker never starts on part of its GPUs.

Real `retrain worker` processes on real Redis, a fake `nvidia-smi` first on PATH (two GPUs)
and a private GPU lock directory (TMPDIR), so other tests on this host never see our claims.
What ran where is read from each run's live log (the devices it saw, and its `end` entry).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.queue import keys
from tests.conftest import CLI
from tests.tasks.conftest import machine_redis_url, queue_list, run_git
from workers.gpus import claim

TRAIN = """\
import os
print("devices", repr(os.environ.get("CUDA_VISIBLE_DEVICES")))
"""
WAIT_S = 120.0  # the machine is shared and loaded: generous, never a measure of speed


@pytest.fixture
def two_gpus(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> Iterator[redis.Redis]:
    """Two fake GPUs, a private lock directory, a flushed Redis, and a project whose script
    prints the devices it was given, registered as three templates needing 0, 1 and 2 GPUs."""
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    rows = "\\n".join(f"{i}, GPU-{i:08d}-fake, NVIDIA H200, 143771" for i in range(2))
    fake.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the workers' GPU locks: private to this test
    repo = tmp_path / "project"
    repo.mkdir()
    run_git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text(TRAIN)
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "train")
    for gpus in (0, 1, 2):
        cli("task", "create", "--project", "p", "--name", f"needs{gpus}", "--repo", str(repo),
            "--script", "train.py", "--queue", "gpu", "--gpus", str(gpus))
    yield client
    client.flushdb()
    client.close()


def worker_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker", *args]


def worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(worker_argv(*args), env=os.environ.copy(), capture_output=True,
                          text=True, timeout=WAIT_S, check=False)


def log_lines(client: redis.Redis, task_id: str) -> list[tuple[str, str]]:
    return [(e[1][b"stream"].decode(), e[1][b"line"].decode())
            for e in client.xrange(keys.logs_stream(task_id))]


def outcome(client: redis.Redis, task_id: str) -> tuple[str | None, list[str]]:
    """The run's end status (None while it has not ended) and the devices it printed."""
    lines = log_lines(client, task_id)
    ended = [line for stream, line in lines if stream == "end"]
    devices = [line for _stream, line in lines if line.startswith("devices")]
    return (ended[0] if ended else None), devices


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run(cli: CLI, gpus: int) -> str:
    return cli("task", "run", f"p/needs{gpus}").out.strip()


@pytest.mark.timeout(600)
def test_a_job_runs_only_on_a_slot_with_the_gpus_it_needs(
    cli: CLI, two_gpus: redis.Redis
) -> None:
    client = two_gpus
    r0, r1, r2 = run(cli, 0), run(cli, 1), run(cli, 2)

    # Two one-GPU slots: they take the jobs needing 0 and 1 GPU, never the one needing 2.
    done = worker("--queue", "gpu", "--gpus", "all", "--per-job", "1", "--burst")
    assert done.returncode == 0, done.stderr
    assert outcome(client, r0)[0] == "completed"
    status, [devices] = outcome(client, r1)
    assert status == "completed"
    assert devices in ("devices 'GPU-00000000-fake'", "devices 'GPU-00000001-fake'")
    assert log_lines(client, r2) == []  # never started on a one-GPU slot
    assert queue_list(machine_redis_url(), "gpu@2") == [r2]
    assert cli.json("queue", "list") == {"gpu": {"high": 0, "normal": 1, "low": 0}}

    # While such slots are live, `retrain status` says the big job waits, and why.
    small = subprocess.Popen(worker_argv("--queue", "gpu", "--gpus", "all", "--per-job", "1"),
                             env=os.environ.copy(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: client.zcard(keys.WORKERS) == 2, "both slots to advertise")
        data = cli.json("status")
        assert isinstance(data, dict)
        [gpu] = [q for q in data["queues"] if q["name"] == "gpu"]
        assert gpu["workers"] == 2 and gpu["redis_waiting"] == 1
        assert gpu["no_slot"] == [{"gpus": 2, "jobs": 1, "largest_slot": 1}]
        shown = " ".join(cli("status").out.split())
        assert ("gpu: 1 job(s) need 2 GPU(s) and wait: the largest live slot listening on it "
                "has 1 GPU(s)") in shown
    finally:
        small.send_signal(signal.SIGTERM)
        small.communicate(timeout=WAIT_S)
    assert log_lines(client, r2) == []

    # One two-GPU slot takes it, and the run sees both devices.
    done = worker("--queue", "gpu", "--gpus", "all", "--per-job", "2", "--burst")
    assert done.returncode == 0, done.stderr
    assert outcome(client, r2) == (
        "completed", ["devices 'GPU-00000000-fake,GPU-00000001-fake'"]
    )


@pytest.mark.parametrize("per_job", ["1", "2"])
def test_gpus_all_refuses_to_start_when_another_worker_holds_a_gpu(
    cli: CLI, two_gpus: redis.Redis, tmp_path: Path, per_job: str
) -> None:
    client = two_gpus
    task = run(cli, 0)
    before = cli.json("task", "show", task)

    with claim((1,), tmp_path / "retrain-gpu-locks"):  # another worker's claim
        refused = worker("--queue", "gpu", "--gpus", "all", "--per-job", per_job, "--burst")

        # Nothing started: the job still waits, no worker announced itself.
        assert log_lines(client, task) == []
        assert queue_list(machine_redis_url(), "gpu") == [task]
        assert client.zcard(keys.WORKERS) == 0
        assert cli.json("task", "show", task) == before
        # Refused at once, in one line that names the holder and what is free.
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr
        [line] = [line for line in refused.stderr.splitlines() if line.strip()]
        assert "--gpus 'all': GPU 1 is already claimed by " in line
        assert f"pid {os.getpid()} on {socket.gethostname()}" in line
        assert "free: 0 (pass --gpus 0 to use only those)" in line

        # The free GPU, named, serves as asked.
        done = worker("--queue", "gpu", "--gpus", "0", "--burst")
        assert done.returncode == 0, done.stderr
        assert outcome(client, task) == ("completed", ["devices 'GPU-00000000-fake'"])


def test_queue_names_by_size_and_the_order_a_slot_asks_for_them() -> None:
    assert keys.sized_queue("gpu", 0) == "gpu" and keys.sized_queue("gpu", 2) == "gpu@2"
    assert keys.rq_queue("gpu", "high", 2) == "gpu@2:high"
    # Priority first, then the largest jobs the slot can hold; no slot hears a bigger job.
    assert keys.rq_queues_in_order("gpu", 2) == [
        "gpu@2:high", "gpu@1:high", "gpu:high",
        "gpu@2", "gpu@1", "gpu",
        "gpu@2:low", "gpu@1:low", "gpu:low",
    ]
    assert keys.rq_queues_in_order("cpu") == ["cpu:high", "cpu", "cpu:low"]
    for gpus in (0, 1, 12):
        for priority in keys.PRIORITIES:
            name = keys.rq_queue("a.b-c_d", priority, gpus)
            assert keys.split_rq_queue(name) == ("a.b-c_d", priority, gpus)
    assert keys.split_rq_queue("other@x") == ("other@x", "normal", 0)
