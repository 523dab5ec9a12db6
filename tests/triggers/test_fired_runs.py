"""What a trigger-fired run is: the same state machine as any run, and after `on_busy:
coalesce`, every rendered field from the newest event."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.store.models import Event, Task
from tests.tasks.conftest import Repo
from tests.triggers.conftest import Loop

NAME = "retrain-on-production-data"


def runs(runtime: Runtime) -> list[Task]:
    with runtime.store.reader() as session:
        return list(session.scalars(select(Task).where(Task.trigger_name == NAME)
                                    .options(selectinload(Task.tag_rows))
                                    .order_by(Task.created_at)))


def task_events(runtime: Runtime, task_id: str) -> list[tuple[str, str]]:
    with runtime.store.reader() as session:
        rows = session.scalars(select(Event).where(Event.entity_id == task_id)
                               .order_by(Event.seq))
        return [(e.kind, e.payload["status"]) for e in rows]


def test_a_fired_run_goes_through_the_same_transitions_as_any_run(
    loop: Loop, database_url: str
) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    runtime.datasets.tag(loop.version(runtime), ["Production"])
    assert scheduler.tick().fired == 1
    [fired] = runs(runtime)
    manual = loop.cli("task", "clone", loop.template).out.strip()
    loop.cli("task", "enqueue", manual)
    expected = [("task.created", "draft"), ("task.queued", "queued")]
    assert task_events(runtime, manual) == expected
    assert task_events(runtime, fired.id) == expected
    assert fired.queued_at is not None and fired.queued_at >= fired.created_at
    runtime.close()


@pytest.mark.parametrize("loop", [("coalesce", 1)], indirect=True)
def test_coalesce_trains_on_the_newest_version_every_field_consistent(
    loop: Loop, database_url: str, git_repo: Repo
) -> None:
    runtime = Runtime()
    seed = loop.version(runtime, "seed")
    loop.cli("task", "create", "--project", "dataset_blogpost", "--name", "training",
             "--repo", str(git_repo.path), "--script", "train.py", "--queue", "gpu",
             "--param", "General/dataset_id=", "General/note=", "--input", f"data={seed}")
    loop.triggers.write_text(loop.triggers.read_text().replace(
        "      tags: [auto]\n", '      tags: [auto]\n      inputs: {data: "${dataset.id}"}\n'))
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    scheduler.reload(force=True)
    scheduler.tick()
    first, second, third = (loop.version(runtime, n) for n in ("first", "second", "third"))
    runtime.datasets.tag(first, ["Production"])
    scheduler.tick()
    [running] = runs(runtime)
    runtime.tasks.start(running.id, "gpu-box-1")  # busy: the next firing waits
    runtime.datasets.tag(second, ["Production"])
    scheduler.tick()
    runtime.datasets.tag(third, ["Production"])
    scheduler.tick()  # folded into the waiting run
    running, waiting = runs(runtime)
    assert waiting.held and len(waiting.coalesced_events) == 1
    assert waiting.parameters["General/dataset_id"] == third
    assert waiting.parameters["General/note"] == "retrain on third v1.0.0"
    assert waiting.inputs == {"data": third}
    assert waiting.resolved_inputs["data"]["version_id"] == third
    assert waiting.tags == ["auto"]
    runtime.close()
