"""Without a worker secret nothing is signed: that must show, not pass silently.

A real scheduler and a real worker run without `RETRAIN_WORKER_SECRET` or `worker.secret`:
`retrain status` says "reports unsigned" (for the scheduler and for the worker), its JSON
says which, and `retrain health` of each says it too. The worker's sandbox level is shown
beside it. With a secret, none of it is said.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.settings import ensure_worker_secret
from tests.conftest import CLI

RETRAIN = [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*RETRAIN, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _both_seen(cli: CLI) -> dict[str, Any]:
    """Status once the scheduler said how it signs and the worker advertised itself."""
    for _ in range(300):
        data: Any = cli.json("status")
        if data["reports"].get("scheduler_signed") is not None and data["workers"]:
            return dict(data)
        time.sleep(0.1)
    raise AssertionError(f"scheduler and worker never showed up: {data}")


def _run(cli: CLI, tmp_path: Path) -> tuple[dict[str, Any], str, str, str]:
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = _start("scheduler", "--triggers", str(triggers), "--poll-interval", "0.2")
    worker = _start("worker", "--queue", "gpu", "--gpus", "none", "--name", "w1")
    try:
        data = _both_seen(cli)
        plain = cli("status").out
        health = subprocess.run([*RETRAIN, "health", "worker"], capture_output=True, text=True,
                                timeout=60, check=False)
        sched = subprocess.run([*RETRAIN, "health", "scheduler"], capture_output=True,
                               text=True, timeout=60, check=False)
    finally:
        _stop(scheduler, worker)
    return data, plain, health.stdout + health.stderr, sched.stdout + sched.stderr


def test_without_a_secret_status_and_health_say_reports_unsigned(
    cli: CLI, machine_redis: str, tmp_path: Path
) -> None:
    data, plain, worker_health, scheduler_health = _run(cli, tmp_path)
    assert data["reports"]["scheduler_signed"] is False, data["reports"]
    assert len(data["workers"]) == 1, data["workers"]
    (worker,) = data["workers"]
    assert worker["reports"] == "unsigned" and worker["sandbox"].startswith(
        ("landlock-abi-", "none")), worker
    assert "reports unsigned" in plain and "w1" in plain, plain
    assert "reports unsigned" in worker_health and "sandbox" in worker_health, worker_health
    assert "reports unsigned" in scheduler_health, scheduler_health


def test_with_a_secret_nothing_is_said(
    cli: CLI, machine_redis: str, tmp_path: Path, retrain_home: Path
) -> None:
    ensure_worker_secret(retrain_home)
    data, plain, worker_health, scheduler_health = _run(cli, tmp_path)
    assert data["reports"]["scheduler_signed"] is True, data["reports"]
    assert data["workers"][0]["reports"] == "signed"
    assert "unsigned" not in plain + worker_health + scheduler_health
    json.dumps(data)


def test_redis_access_cannot_make_status_claim_reports_are_signed(
    cli: CLI, machine_redis: str, tmp_path: Path
) -> None:
    """Whether the scheduler checks signatures is its own fact, recorded in the store: a key
    planted in Redis (which workers, and on a Redis without ACLs anyone, can write) must not
    hide the "reports unsigned" warning."""
    import redis

    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = _start("scheduler", "--triggers", str(triggers), "--poll-interval", "0.2")
    try:
        for _ in range(300):
            data: Any = cli.json("status")
            if data["reports"].get("scheduler_signed") is not None:
                break
            time.sleep(0.1)
        assert data["reports"]["scheduler_signed"] is False, data["reports"]
        attacker = redis.Redis.from_url(machine_redis)
        for key in attacker.keys("retrain:scheduler:*"):
            if attacker.type(key) == b"string" and attacker.get(key) in (b"unsigned",):
                attacker.set(key, "signed")
        attacker.set("retrain:scheduler:signing", "signed")
        attacker.close()
        time.sleep(1.0)  # let the scheduler take a few more turns of its loop
        forged = cli.json("status")
        plain = cli("status").out
    finally:
        _stop(scheduler)
    assert forged["reports"]["scheduler_signed"] is False, forged["reports"]
    assert "reports unsigned" in plain, plain
