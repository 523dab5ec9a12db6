"""Loading triggers.yaml: schema, variables, cycles and template references, every problem
reported as `file:line:col: field: message` (all of them at once, not just the first).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator import templating
from orchestrator.datasets.validate import check_tag
from orchestrator.errors import UserError
from orchestrator.tasks.params import coerce
from orchestrator.triggers.match import glob_match
from orchestrator.triggers.schema import Trigger, TriggersFile
from orchestrator.yamlfile import (
    Document,
    FileError,
    PathKey,
    load_items,
    loads,
    message,
    read,
)

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


@dataclass(frozen=True)
class TemplateShape:
    """What the load-time checks need of a template: where its runs go (cycles) and what
    parameters and inputs its runs accept (overrides)."""

    project: str
    name: str
    parameters: Mapping[str, Any]
    inputs: Mapping[str, Any]


TemplateLookup = Callable[[Collection[str]], Mapping[str, TemplateShape]]
"""Template references -> the shapes of those that name a template (all at once: a file
naming 1,000 templates is checked in one query, see `triggers.templates`)."""

RunLookup = Callable[[Collection[str]], Mapping[str, str]]
"""Template references -> for each that is a run's id, the error saying how to name its
template instead (a trigger clones what was registered, never a run)."""


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
    templates: TemplateLookup | None = None,
    runs: RunLookup | None = None,
    text: str | None = None,
    stream: bool = True,
) -> Config:
    """See `_load_config`; the cyclic garbage collector waits meanwhile (it would walk the
    tens of thousands of objects a big file makes again and again; none form cycles)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_config(
            path, resolve_template=resolve_template, templates=templates, runs=runs, text=text,
            stream=stream,
        )
    finally:
        if collecting:
            gc.enable()


def _load_config(
    path: Path,
    *,
    resolve_template: TemplateResolver | None,
    templates: TemplateLookup | None,
    runs: RunLookup | None,
    text: str | None,
    stream: bool,
) -> Config:
    """Parse and check a triggers file. `resolve_template` (backed by the store) lets cycle
    detection follow templates named by id. `templates` (also backed by the store) does that
    and more: a reference to a template that does not exist is an error, and every override
    and input is checked against the template's parameters, their types and its inputs.
    The daemon passes only `resolve_template`: templates change without the file changing,
    so it records a run that cannot start when it fires instead of refusing the file.
    `runs` (both pass it) finds references that are a run's id: a load error, since a
    trigger must clone a template, and a run never becomes one.
    `stream` parses the triggers one at a time, so a long-running daemon never holds the
    whole file's tree (its resident size stays low); a one-shot command passes False and
    parses the file whole, which is faster."""
    if text is None and not stream:
        text = read(path)
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
    shapes: Mapping[str, TemplateShape] | None = None
    if templates is not None:
        found = shapes = templates({t.run.template for t in triggers})

        def resolve_template(ref: str) -> tuple[str, str] | None:
            shape = found.get(ref)
            return None if shape is None else (shape.project, shape.name)

    not_templates = runs({t.run.template for t in triggers}) if runs is not None else {}
    problems = list(_problems(document, triggers, resolve_template, shapes, not_templates))
    if problems:
        raise FileError(problems)
    revisions = [revision(t) for t in triggers]
    # Each revision hashes everything a trigger does; in file order they hash the file's.
    digest = hashlib.sha256(" ".join(revisions).encode()).hexdigest()
    return Config(
        path, triggers, {t.name: r for t, r in zip(triggers, revisions, strict=True)}, digest[:16]
    )


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
    shapes: Mapping[str, TemplateShape] | None,
    not_templates: Mapping[str, str],
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
        run = trigger.run
        shape = shapes.get(run.template) if shapes is not None else None
        if run.template in not_templates:
            yield document.error((*where, "run", "template"), not_templates[run.template])
        elif shapes is not None and shape is None:
            yield document.error(
                (*where, "run", "template"),
                f"no template {run.template!r} (templates are what task create and "
                "task capture registered; see retrain task list --templates)",
            )
        for key, value in run.overrides.items():
            place = (*where, "run", "overrides", key)
            yield from _check_value(document, place, value, known)
            if shape is not None:
                problem = _override_problem(trigger, shape, key, value)
                if problem:
                    yield document.error(place, problem)
        for key, value in run.inputs.items():
            place = (*where, "run", "inputs", key)
            yield from _check_value(document, place, value, known)
            if shape is not None and key not in shape.inputs and not run.allow_new_params:
                yield document.error(
                    place,
                    f"the template {run.template} has no input {key} (it has: "
                    f"{', '.join(sorted(shape.inputs)) or 'none'}); set "
                    "run.allow_new_params: true to add one",
                )
        for j, tag in enumerate(run.tags):
            yield from _check_value(document, (*where, "run", "tags", j), tag, known)
            if "${" not in tag:  # rendered ones are checked when they are rendered
                try:
                    check_tag(tag)
                except UserError as exc:
                    yield document.error((*where, "run", "tags", j), str(exc))
    yield from _cycles(document, triggers, resolve)


def _override_problem(trigger: Trigger, shape: TemplateShape, key: str, value: Any) -> str:
    """Why the run would refuse this override, or "" (a value with placeholders is typed
    only when it is rendered, at firing time)."""
    if key not in shape.parameters:
        if trigger.run.allow_new_params:
            return ""
        return (
            f"the template {trigger.run.template} has no parameter {key} (it has: "
            f"{', '.join(sorted(shape.parameters)) or 'none'}); set run.allow_new_params: "
            "true to add one"
        )
    if isinstance(value, str) and "${" in value:
        return ""
    return _type_problem(shape.parameters[key], value, key)


def _type_problem(current: Any, value: Any, name: str) -> str:
    """The run's own coercion for text; for typed YAML values, the same types it expects."""
    if isinstance(value, str):
        try:
            coerce(current, value, name)
        except UserError as exc:
            return str(exc).removeprefix(f"--param {name}: ")
        return ""
    if isinstance(current, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        wanted = "an integer"
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        wanted = "a number"
    elif isinstance(current, (list, dict)):
        ok = isinstance(value, type(current))
        wanted = "a list" if isinstance(current, list) else "a mapping"
    elif isinstance(current, str):
        ok, wanted = not isinstance(value, (list, dict)), "a string"
    else:
        return ""
    return "" if ok else f"expects {wanted}, got {value!r}"


def _check_value(
    document: Document, key: PathKey, value: Any, known: Callable[[str], bool]
) -> Iterator[str]:
    if isinstance(value, str):
        if templating.unterminated(value):
            yield document.error(
                key,
                f"unterminated placeholder in {value!r} (close it with }}, or write $${{ "
                "for a literal ${)",
            )
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


def _cycles(
    document: Document, triggers: tuple[Trigger, ...], resolve: TemplateResolver | None
) -> Iterator[str]:
    """Each set of triggers whose runs can fire each other in a loop, reported once, at its
    first trigger. Strongly connected components, found in time linear in the graph: walking
    every path instead took minutes for ten triggers that all feed each other."""
    graph = _FeedGraph(triggers, resolve)
    found = []
    for component in _components(graph.successors):
        members = sorted(n for n in component if n < len(graph.members))
        if len(component) > 1:  # the graph has no self-edges: a loop has several nodes
            found.append(members)
    for members in sorted(found):
        start = members[0]
        names = [triggers[graph.members[n]].name for n in graph.shortest_loop(start, members)]
        also = ""
        if len(members) > len(names) - 1:
            listed = [triggers[graph.members[n]].name for n in members[:10]]
            more = ", ..." if len(members) > 10 else ""
            also = f"; {len(members)} triggers feed each other: {', '.join(listed)}{more}"
        yield document.error(
            ("triggers", graph.members[start], "on"),
            f"runs of this trigger can fire it again ({' -> '.join(names)}){also}; set "
            "allow_cycles: true if that is intended",
        )


class _FeedGraph:
    """Which triggers' runs can fire which triggers, as a graph with three kinds of node:
    triggers, the (project, name) their runs produce, and the source filters of task and
    model triggers. Going through the filters keeps the edges linear: 1,000 triggers that
    all watch `project/*` are 1,000 edges into one filter, not a million between triggers.

    Only task and model triggers can be fired by runs, so only they can be on a loop; those
    with `allow_cycles` are left out, so a loop through one of them is never reported."""

    def __init__(self, triggers: Sequence[Trigger], resolve: TemplateResolver | None) -> None:
        self.members = [
            i
            for i, t in enumerate(triggers)
            if (t.on.task is not None or t.on.model is not None) and not t.allow_cycles
        ]
        self.successors: list[list[int]] = [[] for _ in self.members]
        targets: dict[tuple[str, str], int] = {}
        filters: dict[tuple[str, str, str], int] = {}
        for node, i in enumerate(self.members):
            source = triggers[i].on
            if source.task is not None:
                key = ("task", source.task.project, source.task.name)
            else:
                assert source.model is not None
                key = ("model", source.model.project, "*")
            if key not in filters:
                filters[key] = self._node()
            self.successors[filters[key]].append(node)
            target = template_target(triggers[i].run.template, resolve)
            if target is not None:
                if target not in targets:
                    targets[target] = self._node()
                self.successors[node].append(targets[target])
        exact = {key: node for key, node in filters.items() if not _globbed(key)}
        globbed = [(key, node) for key, node in filters.items() if _globbed(key)]
        for (project, name), node in targets.items():
            fed = [exact.get(("task", project, name)), exact.get(("model", project, "*"))]
            fed += [
                f
                for (kind, pattern, names), f in globbed
                if glob_match(pattern, project) and (kind == "model" or glob_match(names, name))
            ]
            self.successors[node] = [f for f in fed if f is not None]

    def _node(self) -> int:
        self.successors.append([])
        return len(self.successors) - 1

    def shortest_loop(self, start: int, members: Sequence[int]) -> list[int]:
        """Trigger nodes of a shortest loop from `start` back to it, both ends included."""
        inside = set(members)
        parent: dict[int, int] = {}
        queue = [start]
        for node in queue:  # breadth first over triggers, through their targets and filters
            for target in self.successors[node]:
                for f in self.successors[target]:
                    for nxt in self.successors[f]:
                        if nxt == start:
                            path = [node]
                            while path[-1] != start:
                                path.append(parent[path[-1]])
                            return [*reversed(path), start]
                        if nxt in inside and nxt not in parent:
                            parent[nxt] = node
                            queue.append(nxt)
        raise AssertionError("a strongly connected component has a loop through each member")


def _globbed(key: tuple[str, str, str]) -> bool:
    return any(c in part for part in key[1:] for c in "*?[")


def _components(successors: Sequence[Sequence[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components, iterative (a long chain of triggers would
    overflow Python's recursion limit)."""
    count = len(successors)
    index = [-1] * count
    low = [0] * count
    on_stack = [False] * count
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in range(count):
        if index[root] >= 0:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, iter(successors[root]))]
        while work:
            node, pending = work[-1]
            for nxt in pending:
                if index[nxt] < 0:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack[nxt] = True
                    work.append((nxt, iter(successors[nxt])))
                    break
                if on_stack[nxt]:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack[member] = False
                        component.append(member)
                        if member == node:
                            break
                    out.append(component)
    return out
