"""The model registry through the real CLI, with a producing task from a real git repository,
on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.events import read_events
from orchestrator.store.models import Event, Model, ModelTag, Project
from tests.conftest import CLI
from tests.tasks.conftest import Repo, git_repo  # noqa: F401  (the fixture, shared)

UNKNOWN = "0" * 32


@pytest.fixture(autouse=True)
def database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    return database_url


def model_events() -> list[tuple[str, str, list[str], dict[str, Any]]]:
    store = Store(Settings.load().database_url)
    try:
        with store.reader() as session:
            return [
                (e.kind, e.entity_id, e.tags, e.payload)
                for e in read_events(session, 0)
                if e.kind.startswith("model.")
            ]
    finally:
        store.dispose()


def snapshot() -> tuple[object, ...]:
    """What a mistake must leave untouched: models, their tags and flags, projects, events."""
    store = Store(Settings.load().database_url)
    try:
        with store.reader() as s:
            models = s.execute(select(Model.id, Model.published).order_by(Model.id)).all()
            tags = s.execute(select(ModelTag.model_id, ModelTag.tag)).all()
            projects = s.scalar(select(func.count()).select_from(Project))
            events = s.scalar(select(func.count()).select_from(Event))
    finally:
        store.dispose()
    return models, sorted(tags), projects, events


def make_task(cli: CLI, repo: Repo) -> str:
    return cli("task", "create", "--project", "team/vision", "--name", "train",
               "--repo", str(repo.path), "--script", "train.py").out.strip()


def test_register_tag_publish_and_find(cli: CLI, git_repo: Repo) -> None:  # noqa: F811
    task = make_task(cli, git_repo)

    registered = cli("model", "register", "--project", "team/vision/cats", "--name", "resnet",
                     "--uri", "s3://models/cats/resnet.pt", "--task", task,
                     "--tags", "candidate", "nightly", "--metadata", '{"auc": 0.93}')
    model = registered.out.strip()
    assert len(model) == 32 and "team/vision/train" in registered.err
    other = cli("model", "register", "--project", "team/audio", "--name", "wav2vec",
                "--uri", "/srv/models/wav2vec.bin", "--publish").out.strip()

    shown = cli.json("model", "show", model)
    assert shown == {**shown, "project": "team/vision/cats", "name": "resnet",
                     "uri": "s3://models/cats/resnet.pt", "tags": ["candidate", "nightly"],
                     "published": False, "task_id": task, "task_name": "team/vision/train",
                     "metadata": {"auc": 0.93}}

    # Only a new tag is a change: `candidate` is there already, the second call adds nothing.
    assert cli.json("model", "tag", model, "production", "candidate")["tags"] == [
        "candidate", "nightly", "production"]
    cli("model", "tag", model, "production")
    cli("model", "untag", model, "nightly")
    cli("model", "publish", model)
    assert cli.json("model", "publish", model)["published"] is True  # again: a no-op

    # Listing: newest first, the producing task by name and short id; filters combine.
    table = cli("model", "list").out
    lines = [line for line in table.splitlines() if model in line or other in line]
    assert other in lines[0] and model in lines[1]
    assert f"team/vision/train ({task[:8]})" in lines[1]
    assert "candidate, production" in lines[1]

    def ids(*args: str) -> list[str]:
        return [m["id"] for m in cli.json("model", "list", *args)]

    assert ids("--project", "team/*") == [other, model]  # `*` reaches sub-projects
    assert ids("--project", "team/vision/*", "--name", "res*") == [model]
    assert ids("--tag", "production") == [model]
    assert ids("--tag", "nightly") == []
    assert ids("--unpublished") == []
    assert ids("--published", "--limit", "1") == [other]
    assert "no model matches" in cli("model", "list", "--name", "bert").err

    # Events: each change once, in order, with the tags the model had then.
    log = model_events()
    assert [(kind, entity, tags) for kind, entity, tags, _ in log] == [
        ("model.registered", model, ["candidate", "nightly"]),
        ("model.registered", other, []),
        ("model.published", other, []),
        ("model.tagged", model, ["candidate", "nightly", "production"]),
        ("model.published", model, ["candidate", "production"]),
    ]
    assert log[0][3] == {"project": "team/vision/cats", "name": "resnet",
                         "uri": "s3://models/cats/resnet.pt", "task_id": task,
                         "published": False, "inputs": {}}
    assert log[2][3]["published"] is True and log[2][3]["task_id"] is None
    assert log[3][3]["added"] == ["production"]
    assert log[4][3]["published"] is True


def test_mistakes_say_one_line_and_change_nothing(cli: CLI, git_repo: Repo) -> None:  # noqa: F811
    task = make_task(cli, git_repo)
    model = cli("model", "register", "--project", "p", "--name", "m", "--uri",
                "file:///srv/m.pt", "--task", task, "--tags", "candidate").out.strip()

    def register(*args: str) -> list[str]:
        # A new project each time: a refused registration must not create it either.
        return ["model", "register", "--project", "brand/new", "--name", "m", *args]

    cases = [
        (register("--uri", "/m.pt", "--task", UNKNOWN), f"no task '{UNKNOWN}'"),
        (register("--uri", "s3://AKIA1:hunter2@bucket/m.pt"), "carries credentials"),
        (register("--uri", "https://h/m.pt?X-Amz-Credential=AKIA1&X-Amz-Signature=hunter2"),
         "carries credentials"),
        (register("--uri", "models/m.pt"), "'models/m.pt' is a relative path"),
        (register("--uri", "/m.pt", "--metadata", '{"auc": '), "--metadata: not valid JSON"),
        (register("--uri", "/m.pt", "--metadata", '{"auc": NaN}'), "--metadata: not valid JSON"),
        (register("--uri", "/m.pt", "--metadata", "[1]"), "--metadata: expected a JSON object"),
        (["model", "register", "--project", "p//q", "--name", "m", "--uri", "/m.pt"],
         "--project"),
        (["model", "untag", model, "production"],
         f"model {model} has no tag production (its tags: candidate)"),
        (["model", "tag", model, "has space"], "tag 'has space' is not valid"),
        (["model", "tag", UNKNOWN, "x"], f"no model '{UNKNOWN}'"),
        (["model", "publish", UNKNOWN], f"no model '{UNKNOWN}'"),
        (["model", "show", UNKNOWN], f"no model '{UNKNOWN}'"),
    ]
    before = snapshot()
    for args, message in cases:
        err = cli(*args, expect=2).err
        assert err.startswith("retrain: error: ") and err.count("\n") == 1, err
        assert message in err, err
        assert "hunter2" not in err
    assert snapshot() == before
