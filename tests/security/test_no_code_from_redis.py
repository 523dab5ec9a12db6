"""Promise 1 of the trust boundary: nothing read from Redis is unpickled or executed.

Each test plays an attacker who holds only Redis access (plain redis-py, as any training
script that learned the URL could), plants a job, and then lets the real scheduler or a real
`retrain worker` process come across it. The payloads import a module `evil` that the test
writes into the working directory (on the worker's `sys.path`, as a compromised checkout or
site-packages would be), so any import or call of attacker-named code leaves a marker file.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler

EVIL = """\
import pathlib

MARKER = pathlib.Path(__file__).with_name("pwned")


def run(*args, **kwargs):
    MARKER.write_text("ran with %r %r" % (args, kwargs))


pathlib.Path(__file__).with_name("imported").write_text("evil was imported")
"""


class Pickled:
    """Unpickling this runs `evil.run`: what pickle in `meta` means."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import builtins

        return (builtins.exec, ("import evil; evil.run('from pickle')",))


@pytest.fixture
def attacker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine_redis: str
) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(machine_redis)
    (tmp_path / "evil.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here as on the worker's host
    yield client
    client.close()


def plant_job(client: redis.Redis, job_id: str, queue: str, *, func: str,
              started: bool, **fields: bytes | str) -> None:
    """An RQ job hash as RQ writes it (JSON `data`), plus whatever the attacker adds."""
    import zlib

    data = zlib.compress(json.dumps([func, None, ["touch pwned"], {}]).encode())
    now = "2026-01-01T00:00:00.000000Z"
    mapping: dict[str, bytes | str] = {
        "data": data, "created_at": now, "enqueued_at": now, "origin": queue,
        "description": "x", "timeout": "60", "status": "started" if started else "queued",
        **fields,
    }
    client.hset(f"rq:job:{job_id}", mapping=mapping)
    client.sadd("rq:queues", f"rq:queue:{queue}")
    if started:
        # Long expired: the scheduler's registry clean-up treats it as abandoned.
        client.zadd(f"rq:wip:{queue}", {f"{job_id}:exec1": 1.0})
    else:
        client.rpush(f"rq:queue:{queue}", job_id)


def test_the_scheduler_does_not_unpickle_or_call_what_a_planted_job_names(
    attacker: redis.Redis, tmp_path: Path
) -> None:
    plant_job(attacker, "planted", "gpu", func="evil.run", started=True,
              meta=pickle.dumps(Pickled()), failure_callback_name="evil.run")
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = Scheduler(Runtime(), triggers, wakeup=False)
    assert scheduler.reload(force=True)
    scheduler.reconcile(force=True)  # the registry clean-up runs here

    assert not (tmp_path / "pwned").exists(), (tmp_path / "pwned").read_text()
    assert not (tmp_path / "imported").exists()


def worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker", *args],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110, check=False,
    )


def test_a_worker_refuses_any_function_but_retrains_job(
    attacker: redis.Redis, tmp_path: Path
) -> None:
    plant_job(attacker, "planted", "gpu", func="evil.run", started=False)
    # A job naming retrain's own function but carrying attacker-named callbacks.
    plant_job(attacker, "callbacks", "gpu", func="workers.job.run_task", started=False,
              success_callback_name="evil.run", failure_callback_name="evil.run",
              stopped_callback_name="evil.run",
              webhooks=json.dumps([{"url": "http://127.0.0.1:9/hook"}]))
    done = worker("--queue", "gpu", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr

    assert not (tmp_path / "pwned").exists(), (tmp_path / "pwned").read_text()
    assert not (tmp_path / "imported").exists()
    # Refused, and recorded: both jobs ended failed in RQ with the reason, nothing ran.
    for job_id in ("planted", "callbacks"):
        status = attacker.hget(f"rq:job:{job_id}", "status")
        assert status == b"failed", (job_id, status, done.stderr[-2000:])
    from orchestrator.queue.adapter import QueueAdapter

    result = QueueAdapter(attacker).job("planted").latest_result()
    assert result is not None and "refused" in result.exc_string, result
    assert "evil.run" in result.exc_string


def test_an_unreadable_job_hash_fails_that_job_alone(
    attacker: redis.Redis, tmp_path: Path
) -> None:
    # RQ itself cannot parse these fields; before, one such hash ended the worker slot that
    # dequeued it and failed the scheduler's reconcile step on every pass.
    plant_job(attacker, "bad-timeout", "gpu", func="workers.job.run_task", started=False,
              timeout="abc")
    plant_job(attacker, "bad-date", "gpu", func="workers.job.run_task", started=False,
              enqueued_at="yesterday")
    plant_job(attacker, "wip", "gpu", func="workers.job.run_task", started=True, timeout="abc")
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = Scheduler(Runtime(), triggers, wakeup=False)
    scheduler._clean_registries()  # raised ValueError/AssertionError before
    done = worker("--queue", "gpu", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unhandled exception" not in done.stderr, done.stderr[-2000:]
    assert attacker.llen("rq:queue:gpu") == 0  # both were taken, and failed, one by one
    for job_id in ("bad-timeout", "bad-date"):
        assert attacker.hget(f"rq:job:{job_id}", "status") == b"failed", job_id
    scheduler.runtime.close()


def test_nobody_can_command_a_worker_over_rqs_pubsub_channel(
    attacker: redis.Redis, tmp_path: Path
) -> None:
    """RQ's kill-horse/stop-job/shutdown commands come over pub/sub, which anyone with Redis
    access (even the worker ACL user) can publish to: a retrain worker does not listen."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--name", "victim"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not attacker.exists("retrain:worker:victim"):
            assert proc.poll() is None and time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        [(_channel, listeners)] = attacker.pubsub_numsub("rq:pubsub:victim")
        assert listeners == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_a_payload_task_id_never_names_a_folder_outside_the_cache(
    attacker: redis.Redis, tmp_path: Path
) -> None:
    """Without a worker secret nothing is signed; the task id still names folders, so a
    planted `../../victim` must be refused before any folder is made or removed."""
    from orchestrator.queue.adapter import QueueAdapter

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    depth = len((tmp_path / "home" / "cache" / "work").parts) - len(tmp_path.parts)
    payload = {"task_id": "../" * depth + "victim", "attempt": 0,
               "spec": {"repo": str(tmp_path), "entry": {"script": "x.py"}, "timeout_s": 60}}
    QueueAdapter(attacker).enqueue("planted", payload, queue="gpu", priority="normal",
                                   timeout_s=60)
    done = worker("--queue", "gpu", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (victim / "keep.txt").read_text() == "mine" and not (victim / "src").exists()
    result = QueueAdapter(attacker).job("planted").latest_result()
    assert result is not None and "not a task id" in result.exc_string
