"""The scheduler daemon's Prometheus endpoint and `retrain health`, on a real process."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request

from orchestrator.runtime import Runtime
from orchestrator.scheduler.metrics import reason_label
from tests.triggers.conftest import Loop, daemon, wait_for


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_the_scheduler_serves_metrics_and_reports_healthy(loop: Loop) -> None:
    cli = loop.cli
    assert "no running scheduler" in cli("health", "scheduler", expect=1).err
    runtime = Runtime()
    port = _free_port()
    with daemon("--metrics-port", str(port), "--reconcile-every", "0.2") as proc:
        wait_for(lambda: _scrape(port).get("retrain_scheduler_leader") == 1, "the lease")
        first = loop.version(runtime, "first")
        runtime.datasets.tag(first, ["Production"])
        fired = 'retrain_trigger_decisions_total{decision="fired",reason="",' \
                'trigger="retrain-on-production-data"}'
        samples = wait_for(lambda: _scrape(port).get(fired) == 1 and _scrape(port), "a firing")
        assert isinstance(samples, dict)
        # Tagging again is the same event source: a duplicate, counted by its reason.
        runtime.datasets.tag(first, ["Production", "again"])
        skipped = 'retrain_trigger_decisions_total{decision="skipped",reason="duplicate",' \
                  'trigger="retrain-on-production-data"}'
        wait_for(lambda: _scrape(port).get(skipped) == 1, "a counted skip")
        samples = wait_for(
            lambda: (s := _scrape(port)).get('retrain_queue_depth{queue="gpu"}') == 1 and s,
            "the queue depth gauge")
        assert isinstance(samples, dict)
        assert samples['retrain_tasks{status="queued"}'] == 1
        assert samples["retrain_events_processed_total"] >= 3
        assert samples["retrain_detection_latency_seconds_count"] == 1
        assert 0 <= samples["retrain_detection_latency_seconds_sum"] < 60
        assert samples['retrain_reconcile_actions_total{action="enqueued"}'] == 0
        assert samples['retrain_scheduler_step_failures{step="poll"}'] == 0

        healthy = cli("health", "scheduler")
        assert healthy.out.startswith("scheduler healthy: "), healthy.out
        # A daemon that stopped looping (frozen here) is unhealthy once past --max-age.
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(1.5)
            stuck = cli("health", "scheduler", "--max-age", "1", expect=1).err
            assert "scheduler not looping" in stuck and f"pid {proc.pid}" in stuck, stuck
        finally:
            proc.send_signal(signal.SIGCONT)
    assert "no running scheduler" in cli("health", "scheduler", expect=1).err
    assert "ROLE: 'web' is not scheduler or worker" in cli("health", "web", expect=2).err
    runtime.close()


def test_skip_reasons_become_few_label_values() -> None:
    assert reason_label("duplicate of task 0123abcd") == "duplicate"
    assert reason_label("cooldown until 2026-11-21T10:00:00") == "cooldown"
    assert reason_label("disabled") == "disabled"
    assert reason_label("cannot start: branch 'main' no longer exists") == "cannot_start"
    assert reason_label("busy: 3 run(s) queued or running") == "busy"
    assert reason_label("") == "none"
