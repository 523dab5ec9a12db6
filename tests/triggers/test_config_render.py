"""Every rendered field of a trigger's run, as the scheduler fires it on real Redis and real
stores: tags are rendered like overrides and inputs."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.store.models import Task
from tests.triggers.conftest import Loop


def test_run_tags_are_rendered(loop: Loop, database_url: str) -> None:
    text = loop.triggers.read_text()
    assert "      tags: [auto]\n" in text
    loop.triggers.write_text(text.replace(
        "      tags: [auto]\n",
        '      tags: [auto, "from-${dataset.version}", "${dataset.name}"]\n'))
    loop.cli("triggers", "check")
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    assert scheduler.reload(force=True)
    scheduler.tick()
    version = loop.version(runtime, tags=("Production",))
    assert scheduler.tick().fired == 1
    with runtime.store.reader() as session:
        [task] = session.scalars(select(Task).where(Task.trigger_name.is_not(None))
                                 .options(selectinload(Task.tag_rows)))
        assert task.tags == ["auto", "from-1.0.0", "occupancy"]
    assert loop.jobs() == [task.id]
    assert version in task.parameters.values()


def test_a_tag_no_run_can_carry_fails_check(loop: Loop, database_url: str) -> None:
    text = loop.triggers.read_text()
    loop.triggers.write_text(text.replace("      tags: [auto]\n",
                                          '      tags: [auto, "two words"]\n'))
    err = loop.cli("triggers", "check", expect=2).err
    assert err.strip() == (
        f"{loop.triggers}:16:20: triggers[0].run.tags[1]: tag 'two words' is not valid "
        "(1-128 characters, no spaces or commas)")
