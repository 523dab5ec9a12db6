"""Loading triggers.yaml: schema, variables, cycles and template references, every problem
reported as `file:line:col: field: message` (all of them at once, not just the first).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator import templating
from orchestrator.triggers.match import glob_match
from orchestrator.triggers.schema import Trigger, TriggersFile
from orchestrator.yamlfile import Document, FileError, PathKey, load_items, loads, message

TRIGGERS_ENV = "RETRAIN_TRIGGERS_FILE"

COMMON_VARIABLES = ("trigger.name", "event.id", "event.time")
SOURCE_VARIABLES: dict[str, tuple[str, ...]] = {
    "dataset": (
        "dataset.id",
        "dataset.name",
        "dataset.project",
        "dataset.version",
        "dataset.tags",
        "dataset.uri",
    ),
    "task": ("task.id", "task.name", "task.project", "task.status"),
    "model": (
        "model.id",
        "model.name",
        "model.project",
        "model.uri",
        "model.tags",
        "model.task_id",
    ),
    "schedule": (),
}
PREFIX_VARIABLES: dict[str, tuple[str, ...]] = {
    "task": ("task.metrics.",),
    "model": ("model.inputs.",),
}

TemplateResolver = Callable[[str], "tuple[str, str] | None"]
"""Template reference -> (project, name) of the task it names, or None if there is none."""


def triggers_path(given: str | Path | None = None) -> Path:
    """`--triggers FILE`, else RETRAIN_TRIGGERS_FILE, else ./triggers.yaml."""
    if given:
        return Path(given)
    return Path(os.environ.get(TRIGGERS_ENV) or "triggers.yaml")


@dataclass(frozen=True)
class Config:
    """A loaded triggers file: triggers (defaults applied) and each one's revision."""

    path: Path
    triggers: tuple[Trigger, ...]
    revisions: Mapping[str, str]
    digest: str

    def get(self, name: str) -> Trigger | None:
        return next((t for t in self.triggers if t.name == name), None)


def variables_for(trigger: Trigger) -> Callable[[str], bool]:
    kind = trigger.on.kind
    names = set(COMMON_VARIABLES) | set(SOURCE_VARIABLES[kind])
    prefixes = PREFIX_VARIABLES.get(kind, ())
    return lambda name: name in names or (bool(prefixes) and name.startswith(prefixes))


def revision(trigger: Trigger) -> str:
    """A short hash of everything that decides what the trigger does."""
    canonical = json.dumps(trigger.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_config(
    path: Path,
    *,
    resolve_template: TemplateResolver | None = None,
    check_templates: bool = False,
    text: str | None = None,
) -> Config:
    """Parse and check a triggers file. `resolve_template` (backed by the store) lets cycle
    detection follow templates named by id, and with `check_templates` a reference to a
    template that does not exist is an error."""
    if text is None:
        document, raw = load_items(path, "triggers")
    else:
        document = loads(text, path)
        raw = iter(
            document.data.pop("triggers", None) or [] if isinstance(document.data, dict) else []
        )
    if document.data is None:
        raise FileError([f"{path}:1:1: (top): the file is empty; it needs `version: 1`"])
    head: TriggersFile = document.validate(TriggersFile)
    # Each trigger is validated as it is parsed: with 10,000 of them, the raw tree of the
    # whole file never exists at once.
    problems: list[str] = []
    parsed: list[Trigger] = []
    for i, item in enumerate(raw):
        try:
            parsed.append(Trigger.model_validate(item))
        except ValidationError as exc:
            problems += [
                document.error(("triggers", i, *e["loc"]), message(e)) for e in exc.errors()
            ]
    if problems:
        raise FileError(problems)
    triggers = tuple(_with_defaults(t, head) for t in parsed)
    problems = list(_problems(document, triggers, resolve_template, check_templates))
    if problems:
        raise FileError(problems)
    digest = hashlib.sha256(
        json.dumps([t.model_dump(mode="json") for t in triggers], sort_keys=True).encode()
    ).hexdigest()
    return Config(path, triggers, {t.name: revision(t) for t in triggers}, digest[:16])


def _with_defaults(trigger: Trigger, parsed: TriggersFile) -> Trigger:
    run = trigger.run
    updates: dict[str, Any] = {}
    if run.queue is None and parsed.defaults.queue:
        updates["queue"] = parsed.defaults.queue
    if "priority" not in run.model_fields_set and parsed.defaults.priority:
        updates["priority"] = parsed.defaults.priority
    if not updates:
        return trigger
    return trigger.model_copy(update={"run": run.model_copy(update=updates)})


def _problems(
    document: Document,
    triggers: tuple[Trigger, ...],
    resolve: TemplateResolver | None,
    check_templates: bool,
) -> Iterator[str]:
    seen: dict[str, int] = {}
    for i, trigger in enumerate(triggers):
        where: PathKey = ("triggers", i)
        if trigger.name in seen:
            yield document.error(
                (*where, "name"),
                f"duplicate trigger name {trigger.name!r} (also triggers[{seen[trigger.name]}])",
            )
        seen.setdefault(trigger.name, i)
        known = variables_for(trigger)
        for key, value in trigger.run.overrides.items():
            yield from _check_value(document, (*where, "run", "overrides", key), value, known)
        for key, value in trigger.run.inputs.items():
            yield from _check_value(document, (*where, "run", "inputs", key), value, known)
        for j, tag in enumerate(trigger.run.tags):
            yield from _check_value(document, (*where, "run", "tags", j), tag, known)
        if check_templates and resolve is not None and resolve(trigger.run.template) is None:
            yield document.error(
                (*where, "run", "template"),
                f"no template {trigger.run.template!r} (templates are draft "
                "or completed tasks; see retrain task list)",
            )
    yield from _cycles(document, triggers, resolve)


def _check_value(
    document: Document, key: PathKey, value: Any, known: Callable[[str], bool]
) -> Iterator[str]:
    if isinstance(value, str):
        for name in templating.placeholders(value):
            if not known(name):
                yield document.error(key, f"unknown variable ${{{name}}} for this trigger's source")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _check_value(document, (*key, i), item, known)
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _check_value(document, (*key, str(k)), item, known)


def template_target(ref: str, resolve: TemplateResolver | None) -> tuple[str, str] | None:
    """(project, name) of the tasks a template reference produces."""
    path = ref.partition("@")[0]
    project, _, name = path.rpartition("/")
    if project and name:
        return project, name
    return resolve(ref) if resolve is not None else None


def feeds(producer: Trigger, consumer: Trigger, resolve: TemplateResolver | None) -> bool:
    """Whether runs started by `producer` can fire `consumer` (task events of the runs, or
    models the runs register in their project)."""
    target = template_target(producer.run.template, resolve)
    if target is None:
        return False
    project, name = target
    source = consumer.on
    if source.task is not None:
        return glob_match(source.task.project, project) and glob_match(source.task.name, name)
    if source.model is not None:
        return glob_match(source.model.project, project)
    return False


def _cycles(
    document: Document, triggers: tuple[Trigger, ...], resolve: TemplateResolver | None
) -> Iterator[str]:
    # Only task and model triggers can be fed by runs; with 10,000 dataset triggers this keeps
    # the graph small instead of comparing every pair.
    consumers = [u for u in triggers if u.on.task is not None or u.on.model is not None]
    edges = {t.name: [u.name for u in consumers if feeds(t, u, resolve)] for t in triggers}
    by_name = {t.name: i for i, t in enumerate(triggers)}
    reported: set[frozenset[str]] = set()
    for start in edges:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start:
                    cycle = frozenset(path)
                    allowed = any(triggers[by_name[n]].allow_cycles for n in path)
                    if not allowed and cycle not in reported:
                        reported.add(cycle)
                        loop = " -> ".join([*path, start])
                        yield document.error(
                            ("triggers", by_name[start], "on"),
                            f"runs of this trigger can fire it again ({loop}); set "
                            "allow_cycles: true if that is intended",
                        )
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))
