"""Prometheus metrics of the scheduler daemon (`retrain scheduler --metrics-port PORT`).

Counters move as the daemon works (events read, trigger decisions, reports applied,
reconcile actions); the loop steps' failures in a row follow each iteration; gauges (queue
depths, tasks by status) are read from the store on each
reconcile pass, and as often on a standby, so every scheduler's endpoint shows them. A skip's
reason is reduced to its first words (`duplicate of task abc...` -> `duplicate`) to keep
label values few.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from orchestrator.scheduler.engine import Decision
    from orchestrator.store import Store

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


def reason_label(reason: str) -> str:
    """`duplicate of task 0123...` -> `duplicate`; `cannot start: <error>` -> `cannot_start`:
    the words before any detail, at most two."""
    words = re.findall(r"[a-z_]+", reason.split(":", 1)[0].lower())
    for stop in ("of", "for", "until", "since", "left", "by"):
        if stop in words:
            words = words[: words.index(stop)]
    return "_".join(words[:2]) or "none"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "retrain_events_processed", "Store events the scheduler has read.", registry=r
        )
        self.decisions = Counter(
            "retrain_trigger_decisions",
            "Trigger decisions: fired, skipped, coalesced, superseded; skips by reason.",
            ["trigger", "decision", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "retrain_detection_latency_seconds",
            "From an event being recorded to the trigger it fired being decided.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reports = Counter(
            "retrain_worker_reports_applied", "Worker reports applied to the store.", registry=r
        )
        self.reconcile = Counter(
            "retrain_reconcile_actions",
            "What reconcile passes did: jobs enqueued or removed, lost runs settled.",
            ["action"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "retrain_queue_depth", "Tasks queued in the store, per queue.", ["queue"], registry=r
        )
        self.tasks = Gauge(
            "retrain_tasks", "Runs (not templates) by status.", ["status"], registry=r
        )
        self.leader = Gauge(
            "retrain_scheduler_leader", "1 while this scheduler holds the lease.", registry=r
        )
        self.step_failures = Gauge(
            "retrain_scheduler_step_failures",
            "Failures in a row of each loop step (0: its last run succeeded).",
            ["step"],
            registry=r,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a scrape target
        start_http_server(port, addr=addr, registry=self.registry)

    def decided(self, decisions: list[Decision], now_ts: float) -> None:
        for d in decisions:
            reason = reason_label(d.reason) if d.decision == "skipped" else ""
            self.decisions.labels(d.trigger, d.decision, reason).inc()
            if d.decision == "fired" and d.event_time is not None:
                self.latency.observe(max(0.0, now_ts - d.event_time.timestamp()))

    def refresh(self, store: Store) -> None:
        """Queue depths and tasks by status, in two grouped queries."""
        from sqlalchemy import func, select

        from orchestrator.store.models import Task
        from orchestrator.tasks.states import STATUSES

        with store.reader() as session:
            depth = dict(
                session.execute(
                    select(Task.queue, func.count())
                    .where(Task.status == "queued")
                    .group_by(Task.queue)
                ).all()
            )
            by_status = dict(
                session.execute(
                    select(Task.status, func.count())
                    .where(Task.parent_id.is_not(None))
                    .group_by(Task.status)
                ).all()
            )
        for queue in {labels[0] for labels in _label_sets(self.queue_depth)} | set(depth):
            self.queue_depth.labels(queue).set(depth.get(queue, 0))
        for status in STATUSES:
            self.tasks.labels(status).set(by_status.get(status, 0))


def _label_sets(metric: Gauge) -> list[tuple[str, ...]]:
    return [tuple(s.labels.values()) for m in metric.collect() for s in m.samples]
