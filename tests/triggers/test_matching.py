"""Matching, tag semantics, variables and cycles: pure, no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.triggers.config import load_config
from orchestrator.triggers.match import EventView, glob_match, match
from orchestrator.triggers.schema import Trigger
from orchestrator.yamlfile import FileError


def trigger(on: dict[str, object], **extra: object) -> Trigger:
    return Trigger.model_validate({"name": "t", "on": on, "run": {"template": "p/train"},
                                   **extra})


def dataset_event(action: str = "tagged", project: str = "blog", name: str = "occ",
                  tags: tuple[str, ...] = ("Production",), status: str = "final") -> EventView:
    return EventView(seq=1, kind=f"dataset.version.{action}", entity_id="v" * 32,
                     project=project, name=name, tags=tags,
                     payload={"status": status, "version": "1.0.1"})


def test_globs_keep_single_stars_within_a_segment() -> None:
    assert glob_match("blog", "blog") and not glob_match("blog", "blog/sub")
    assert glob_match("team/*", "team/a") and not glob_match("team/*", "team/a/b")
    assert glob_match("team/**", "team/a/b") and glob_match("**", "anything/at/all")
    assert glob_match("occ-?", "occ-1") and not glob_match("occ-?", "occ-12")


def test_a_bare_tag_list_means_all_of_them() -> None:
    both = trigger({"dataset": {"project": "blog", "tags": ["Production", "reviewed"]}})
    assert not match(both, dataset_event(tags=("Production",))).matched
    assert "lacks reviewed" in match(both, dataset_event(tags=("Production",))).reason
    assert match(both, dataset_event(tags=("Production", "reviewed", "x"))).matched
    single = trigger({"dataset": {"project": "blog", "tags": "Production"}})
    assert match(single, dataset_event()).matched


def test_all_any_none() -> None:
    t = trigger({"dataset": {"tags": {"all": ["A"], "any": ["B", "C"], "none": ["stale"]}}})
    assert match(t, dataset_event(tags=("A", "C"))).matched
    assert match(t, dataset_event(tags=("A",))).reason == "tags: has none of B, C"
    assert match(t, dataset_event(tags=("A", "B", "stale"))).reason == (
        "tags: has excluded stale")


def test_first_failed_filter_is_named() -> None:
    t = trigger({"dataset": {"project": "blog", "name": "occ", "tags": ["Production"],
                             "event": "finalized"}})
    assert match(t, dataset_event(action="tagged")).reason == (
        "event: tagged is not one of finalized")
    t = trigger({"dataset": {"project": "blog", "name": "occ"}})
    assert match(t, dataset_event(project="other")).reason == (
        "project: other does not match blog")
    assert match(t, dataset_event(name="x")).reason == "name: x does not match occ"
    assert "draft" in match(t, dataset_event(status="draft")).reason
    task_event = EventView(seq=2, kind="task.completed", entity_id="t" * 32, project="blog",
                           name="train", payload={"metrics": {"val/acc": 0.85}})
    assert "a task event" in match(t, task_event).reason


def test_task_metrics() -> None:
    t = trigger({"task": {"project": "blog", "name": "train",
                          "metrics": {"val/acc": ">= 0.9"}}})
    def event(value: object) -> EventView:
        return EventView(seq=2, kind="task.completed", entity_id="t" * 32, project="blog",
                         name="train", payload={"status": "completed",
                                                "metrics": {"val/acc": value}})
    assert match(t, event(0.93)).matched
    assert match(t, event(0.85)).reason == "metrics: val/acc = 0.85 is not >= 0.9"
    assert not match(t, event("high")).matched
    no_metric = EventView(seq=3, kind="task.completed", entity_id="t" * 32, project="blog",
                          name="train", payload={"metrics": {}})
    assert match(t, no_metric).reason == "metrics: val/acc was not reported"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "triggers.yaml"
    path.write_text(text)
    return path


def test_the_repository_example_loads() -> None:
    config = load_config(Path(__file__).parents[2] / "triggers.yaml")
    assert {t.name for t in config.triggers} >= {"retrain-on-production-data"}
    assert all(len(rev) == 16 for rev in config.revisions.values())


def test_schema_errors_point_at_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, """\
version: 1
triggers:
  - name: c
    on: {dataset: {tags: {sometimes: [x]}}}
    run: {template: blog/train}
    policy: {on_busy: later}
""")
    with pytest.raises(FileError) as caught:
        load_config(path)
    assert caught.value.problems[0] == (
        f"{path}:4:27: triggers[0].on.dataset.tags.sometimes: unknown field")
    assert f"{path}:6:14: triggers[0].policy.on_busy: Input should be" in caught.value.problems[1]


def test_semantic_problems_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, """\
version: 1
triggers:
  - name: a
    on: {dataset: {project: blog, tags: [Production]}}
    run:
      template: blog/train
      overrides:
        General/note: "from ${task.name}"
  - name: a
    on: {schedule: {cron: "0 3 * * *"}}
    run: {template: blog/train, overrides: {General/x: "${dataset.id}"}}
""")
    with pytest.raises(FileError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    overrides = "triggers[0].run.overrides.General/note"
    assert f"{path}:8:9: {overrides}: unknown variable ${{task.name}}" in text
    assert f"{path}:9:5: triggers[1].name: duplicate trigger name 'a'" in text
    overrides = "triggers[1].run.overrides.General/x"
    assert f"{path}:11:45: {overrides}: unknown variable ${{dataset.id}}" in text


def test_cycles_are_refused_unless_allowed(tmp_path: Path) -> None:
    loop = """\
version: 1
triggers:
  - name: train-on-eval
    on: {task: {project: blog, name: evaluate}}
    run: {template: blog/train}
  - name: eval-on-train
    on: {task: {project: blog, name: train}}
    run: {template: blog/evaluate}
"""
    with pytest.raises(FileError, match=r"can fire it again .*train-on-eval -> eval-on-train"):
        load_config(write(tmp_path, loop))
    allowed = loop.replace("run: {template: blog/evaluate}",
                           "run: {template: blog/evaluate}\n    allow_cycles: true")
    assert len(load_config(write(tmp_path, allowed)).triggers) == 2


def test_series_conditions_use_last_min_and_max() -> None:
    t = trigger({"task": {"project": "blog", "metrics": {
        "loss": "<= 0.3", "min(loss)": "<= 0.2", "max(val/acc)": ">= 0.9"}}})

    def event(series: dict[str, object], metrics: dict[str, object]) -> EventView:
        return EventView(seq=2, kind="task.completed", entity_id="t" * 32, project="blog",
                         name="train", payload={"status": "completed", "metrics": metrics,
                                                "series": series})
    loss = {"last": 0.25, "min": 0.1, "max": 2.0}
    acc = {"last": 0.8, "min": 0.1, "max": 0.95}
    fired = event({"loss": loss, "val/acc": acc}, {"loss": 0.25, "val/acc": 0.8})
    assert match(t, fired).matched
    worse = event({"loss": {**loss, "min": 0.25}, "val/acc": acc}, {"loss": 0.25, "val/acc": 0.8})
    assert match(t, worse).reason == "metrics: min(loss) = 0.25 is not <= 0.2"
    # A metric reported as one number (metrics.json) is its own min and max.
    numbers = event({}, {"loss": 0.15, "val/acc": 0.92})
    assert match(t, numbers).matched
    assert match(t, event({}, {"loss": 0.15})).reason == "metrics: max(val/acc) was not reported"
