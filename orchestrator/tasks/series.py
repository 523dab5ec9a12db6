"""A run's metric series in the store: one `metric_series` row per series (the summary
exact, the points as the worker kept them), written in the transaction that finishes the
run (`lifecycle.finish`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.store.models import MetricSeries


def series_of(session: Session, task_id: str) -> dict[str, dict[str, Any]]:
    """A run's stored metric series: name -> {count, last, step, min, max, points}
    (`records.series`, the query `task show` runs without SQLAlchemy too)."""
    from orchestrator.tasks import records

    session.flush()
    return records.series(session.connection().connection.driver_connection, task_id)


def has_series(session: Session, task_id: str) -> bool:
    return (
        session.scalar(select(MetricSeries.name).where(MetricSeries.task_id == task_id).limit(1))
        is not None
    )


def store_series(session: Session, task_id: str, series: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the run's stored series with `series` (a report applied again writes the same)."""
    for old in session.scalars(select(MetricSeries).where(MetricSeries.task_id == task_id)):
        session.delete(old)
    session.flush()
    for name, data in series.items():
        session.add(
            MetricSeries(
                task_id=task_id,
                name=name,
                count=int(data["count"]),
                last=float(data["last"]),
                step=data.get("step"),
                min=float(data["min"]),
                max=float(data["max"]),
                points=list(data.get("points") or []),
            )
        )


def summaries(series: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """What the finished event carries of each series (triggers test last, min and max)."""
    return {
        name: {"last": data["last"], "min": data["min"], "max": data["max"]}
        for name, data in series.items()
    }
