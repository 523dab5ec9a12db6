"""Migration 0008 turns a store made before templates and runs existed into templates and
runs, on SQLite and PostgreSQL: the store is built at revision 0007 with the rows today's
main wrote (registered drafts, clones of templates and of completed runs, inherited tags, a
task queued without a clone), then upgraded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.store.db import driver_url
from orchestrator.store.migrate import upgrade
from orchestrator.store.models import JSONType, UTCDateTime
from tests.conftest import CLI

PROJECTS = sa.table(
    "projects", sa.column("id", sa.Integer), sa.column("path", sa.String),
    sa.column("created_at", UTCDateTime),
)
TASKS = sa.table(
    "tasks", *(sa.column(c, sa.String) for c in (
        "id", "name", "type", "status", "comment", "parent_id", "trigger_name", "queue",
        "priority")),
    sa.column("project_id", sa.Integer),
    *(sa.column(c, UTCDateTime) for c in ("created_at", "queued_at", "finished_at")),
    *(sa.column(c, JSONType) for c in (
        "metrics", "spec", "parameters", "inputs", "resolved_inputs")),
)
TAGS = sa.table("task_tags", sa.column("task_id", sa.String), sa.column("tag", sa.String))
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def task(task_id: str, minute: int, *, name: str = "train", status: str = "draft",
         parent: str | None = None, queued: bool = False, lr: float = 0.01,
         project: int = 1, **extra: Any) -> dict[str, Any]:
    """A tasks row as main wrote it at revision 0007."""
    created = T0 + dt.timedelta(minutes=minute)
    spec = {"repo": "/srv/repo", "commit": "a" * 40 if queued else None, "branch": None,
            "working_dir": ".", "entry": {"script": "train.py", "module": None}, "args": [],
            "env": {}, "requirements": [], "gpus": 0, "timeout_s": 3600}
    return {"id": task_id.ljust(32, "0"), "project_id": project, "name": name, "type": "training",
            "status": status, "comment": "", "parent_id": parent and parent.ljust(32, "0"),
            "trigger_name": None, "queue": "gpu", "priority": "normal", "created_at": created,
            "queued_at": created if queued else None, "finished_at": None, "metrics": {},
            "spec": spec, "parameters": {"Args/lr": lr}, "inputs": {}, "resolved_inputs": {},
            **extra}


def full(short: str) -> str:
    return short.ljust(32, "0")


def test_a_store_of_drafts_and_clones_becomes_templates_and_runs(
    cli: CLI, database_url: str, retrain_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retrain_home.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(driver_url(database_url))
    if engine.dialect.name == "sqlite":
        # As the store opens SQLite (orchestrator.store.db): foreign keys enforced. A batch
        # copy of `tasks` then fails on a store with clones (found by the new-user pass).
        sa.event.listen(
            engine, "connect", lambda conn, _record: conn.execute("PRAGMA foreign_keys=ON")
        )
    upgrade(engine, "0007")
    rows = [
        task("a1", 0, tags=["stable"]),                      # registered: template rev 1
        task("b1", 1, status="completed", parent="a1", queued=True, lr=0.5,
             tags=["stable"]),                              # manual run, inherited the tag
        task("c1", 2, status="queued", parent="b1", queued=True, lr=0.5,
             trigger_name="retrain"),                       # fired from the completed run
        task("d1", 3, parent="a1"),                         # a draft clone never queued
        task("e1", 4, lr=0.02),                             # registered again: rev 2
        task("f1", 5, status="queued", queued=True),        # registered and queued at once
        task("a2", 6, name="evaluate"),                     # another template
        task("a3", 7, status="aborted"),                    # a draft aborted: not a template
        task("a4", 8, project=2),                           # same name, other project
    ]
    with engine.begin() as conn:
        conn.execute(PROJECTS.insert(), [{"id": 1, "path": "team", "created_at": T0},
                                         {"id": 2, "path": "other", "created_at": T0}])
        for row in rows:
            tags = row.pop("tags", [])
            conn.execute(TASKS.insert(), [row])
            conn.execute(TAGS.insert(), [{"task_id": row["id"], "tag": t} for t in tags]
                         ) if tags else None
    upgrade(engine, "head")
    with engine.connect() as conn:
        found = {r.id[:2]: (r.kind, r.revision, r.template_id and r.template_id[:2])
                 for r in conn.execute(sa.text(
                     "SELECT id, kind, revision, template_id FROM tasks"))}
    engine.dispose()
    assert found == {
        "a1": ("template", 1, None), "e1": ("template", 2, None),
        "a2": ("template", 1, None), "a4": ("template", 1, None),
        "b1": ("run", None, "a1"), "c1": ("run", None, "a1"), "d1": ("run", None, "a1"),
        "f1": ("run", None, None), "a3": ("run", None, None),
    }

    # What users see afterwards: names resolve to templates only.
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    assert cli.json("task", "show", "team/train")["id"] == full("e1")
    assert cli.json("task", "show", "team/train@stable")["id"] == full("a1")
    assert [t["id"] for t in cli.json("task", "list", "--templates", "--project", "team")] == [
        full("a2"), full("e1"), full("a1")]
    assert cli.json("task", "show", full("c1"))["template"] == full("a1")
    err = cli("task", "enqueue", full("a1"), expect=2).err
    assert "is a template" in err
