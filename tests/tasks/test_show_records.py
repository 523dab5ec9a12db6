"""`task show --json` reads with SQL on the bare driver (`orchestrator/tasks/records.py`): its
output is, byte for byte, what the ORM views printed, for a template and for a finished run
with metrics, series, models, artifacts and lineage, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.runtime import Runtime
from orchestrator.store.models import Event, MetricSeries, Model, Task, TaskTag
from orchestrator.tasks import listing
from orchestrator.tasks.lineage import EventRef, ModelRef, RunLineage
from orchestrator.tasks.views import TaskInfo
from tests.conftest import CLI
from tests.tasks.conftest import Repo


def shown_by_the_orm(runtime: Runtime, task_id: str) -> str:
    """What `task show --json` printed before it read with SQL (the ORM views, inlined)."""
    with runtime.store.reader() as s:
        row = s.get(Task, task_id)
        assert row is not None
        info = TaskInfo.of(row)
        seqs = [int(q) for q in row.coalesced_events or ()]
        if row.trigger_event_seq is not None:
            seqs.append(row.trigger_event_seq)
        events = {
            e.seq: EventRef.of(e)
            for e in (s.scalars(select(Event).where(Event.seq.in_(seqs))) if seqs else ())
        }
        models = s.scalars(
            select(Model)
            .where(Model.task_id == task_id)
            .order_by(Model.created_at.desc(), Model.id)
        )
        traced = RunLineage(
            cause=events.get(row.trigger_event_seq or -1),
            absorbed_events=[events[q] for q in row.coalesced_events or () if q in events],
            models=[ModelRef.of(m) for m in models],
        )
        series = (
            {
                r.name: {
                    "count": r.count,
                    "last": r.last,
                    "step": int(r.step)
                    if r.step is not None and float(r.step).is_integer()
                    else r.step,
                    "min": r.min,
                    "max": r.max,
                }
                for r in s.scalars(
                    select(MetricSeries)
                    .where(MetricSeries.task_id == task_id)
                    .order_by(MetricSeries.name)
                )
            }
            if info.status != "draft"
            else {}
        )
        shown: dict[str, Any] = {
            **info.model_dump(mode="json"),
            **traced.model_dump(mode="json"),
            "series": series,
        }
        if info.kind == "template":
            conn = s.connection().connection.driver_connection
            shown.update(listing.template_overview(conn, info.project, info.name))
    return json.dumps(shown, indent=2, sort_keys=False, default=str) + "\n"


def test_task_show_json_is_what_the_orm_views_printed(
    cli: CLI, git_repo: Repo, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    template = cli(
        "task", "create", "--project", "team/show", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gpu",
        "--param", "General/lr=0.1", "--tags", "candidate", "best",
    ).out.strip()  # fmt: skip
    runtime = Runtime()
    started = dt.datetime(2026, 12, 2, 9, 30, 0, 123456, tzinfo=dt.timezone.utc)
    with runtime.store.session() as s:
        base = s.get(Task, template)
        assert base is not None
        cause = Event(
            kind="dataset.version.tagged", entity_id="v" * 32, project="team/data",
            name="occ", tags=["Production"], payload={"version": "3"},
        )  # fmt: skip
        absorbed = Event(
            kind="dataset.version.tagged", entity_id="w" * 32, project="team/data",
            name="occ", tags=[], payload={},
        )  # fmt: skip
        s.add_all([absorbed, cause])
        s.flush()
        run = Task(
            project_id=base.project_id, name=base.name, type=base.type, status="completed",
            kind="run", template_id=template, parent_id=template,
            trigger_name="retrain-on-data", trigger_event_seq=cause.seq,
            trigger_entity_kind="dataset", trigger_entity_id="v" * 32, queue="gpu",
            priority="high", spec=dict(base.spec), parameters={"General/lr": 0.05},
            inputs={}, resolved_inputs={}, metrics={"loss": 0.25, "acc": 1.0, "n": 3},
            started_at=started, finished_at=started + dt.timedelta(seconds=12, microseconds=5),
            queued_at=started.replace(microsecond=0), worker="gpu-box-1", exit_code=0,
            error=None, environment={"key": "k" * 64, "hit": True, "frozen": ["a==1"]},
            artifacts=[{"path": "models/occ.txt", "uri": "file:///tmp/occ.txt", "size": 7}],
            duration_s=12.000005, attempt=1, logged_params={"General/epochs": 3},
            coalesced_events=[absorbed.seq], comment="né à Paris",
        )  # fmt: skip
        s.add(run)
        s.flush()
        s.add_all(
            [
                TaskTag(task_id=run.id, tag="zeta"),
                TaskTag(task_id=run.id, tag="alpha"),
                MetricSeries(
                    task_id=run.id, name="loss", count=3, last=0.25, step=2.0, min=0.25,
                    max=1.0, points=[[0, 1, 2], [1.0, 0.5, 0.25]],
                ),
                MetricSeries(
                    task_id=run.id, name="acc", count=1, last=1.0, step=0.5, min=1.0,
                    max=1.0, points=[[0.5], [1.0]],
                ),
                Model(project_id=base.project_id, name="occ", uri="s3://b/occ", task_id=run.id),
                Model(project_id=base.project_id, name="occ-small", uri="s3://b/s", task_id=run.id),
            ]
        )  # fmt: skip
        run_id = run.id
    for task_id, ref in [
        (template, template),
        (template, "team/show/train"),
        (template, "team/show/train@best"),
        (run_id, run_id),
    ]:
        expected = shown_by_the_orm(runtime, task_id)
        assert cli("task", "show", ref, "--json").out == expected, ref
    shown = json.loads(expected)
    assert [m["name"] for m in shown["models"]] and shown["series"]["loss"]["step"] == 2
    assert shown["cause"]["seq"] and len(shown["absorbed_events"]) == 1
    assert shown["tags"] == ["alpha", "zeta"]
    # The human form prints the same record, whichever path read it.
    from orchestrator.store import lean as lean_store

    def unavailable(url: str) -> None:  # the bare driver cannot serve it: the full store does
        raise lean_store.Unavailable("forced")

    for ref in (template, run_id):
        lean = cli("task", "show", ref).out
        with monkeypatch.context() as m:
            m.setattr(lean_store, "connect", unavailable)
            assert cli("task", "show", ref).out == lean
    assert "event " in lean and "models registered:" in lean and "models/occ.txt" in lean
    assert "2026-12-02 09:30:00" in lean and "12.0 s" in lean
    assert runtime.tasks.lookup("team/show/train@candidate").id == template
    missing = cli("task", "show", "team/show/nothing", "--json", expect=2)
    assert "team/show/nothing" in missing.err and missing.err.count("\n") == 1
    runtime.close()
