"""A run's columns from its source and the overrides, without SQLAlchemy: what `cloning.new_row`
makes a row of, and what `task run`'s bare-driver path (`tasks.runs`) inserts.

The source is a template revision (the run records it as its template and parent) or another
run (`task run RUN_ID`: the run records that run as its parent and inherits its template; its
frozen commit and parameters make it an exact re-run). A run takes no tags from its source:
only the ones given (`--tags`, a trigger's `run.tags`), so `@tag` keeps naming templates."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import templating
from orchestrator.datasets.validate import check_name, check_tag
from orchestrator.errors import UserError
from orchestrator.store.lean import utcnow
from orchestrator.tasks.inputs import check_input_refs, check_placeholders
from orchestrator.tasks.names import check_queue
from orchestrator.tasks.params import apply_overrides
from orchestrator.tasks.records import TEMPLATE as TEMPLATE

RUN = "run"

SOURCE_FIELDS = (
    "id", "kind", "template", "name", "type", "comment", "queue", "spec", "parameters", "inputs"
)  # fmt: skip
"""What `clone_values` reads of its source: these keys of a task record (`records.task`)."""


@dataclass(frozen=True)
class CloneOptions:
    """How a clone differs from its template."""

    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    """Overrides: raw strings from the CLI (typed like the template's values) or typed values;
    `${...}` placeholders allowed."""
    inputs: Mapping[str, str] = field(default_factory=dict)
    queue: str | None = None
    tags: Iterable[str] = ()
    allow_new_params: bool = False
    context: Mapping[str, Any] = field(default_factory=dict)
    """Variables for placeholders besides the task's own `params.*` (a trigger's `dataset.*`)."""
    trigger: tuple[Any, ...] | None = None
    """A `lineage.TriggerCause` (trigger name, event sequence, entity kind and id) when a
    trigger creates the clone."""


def cause_columns(cause: tuple[Any, ...] | None) -> dict[str, Any]:
    """The task columns that record a trigger's cause (name, event sequence, entity kind and
    id: a `lineage.TriggerCause`); all None for a run nobody's trigger made."""
    name, seq, kind, entity = (*cause, None, None)[:4] if cause is not None else (None,) * 4
    return {
        "trigger_name": name,
        "trigger_event_seq": seq,
        "trigger_entity_kind": kind,
        "trigger_entity_id": entity,
    }


def clone_values(
    conn: Any, source: Mapping[str, Any], options: CloneOptions
) -> tuple[dict[str, Any], list[str]]:
    """The new draft run's columns (by name, `project_id` aside) and its tags, cloned from
    `source` (its `SOURCE_FIELDS`) with `options`; `conn` (a bare driver connection) checks
    that the inputs name dataset versions that exist."""
    # Overrides without placeholders apply first, so `${params.X}` in another override
    # sees the value X has in this run, not the template's.
    overrides = dict(options.params)
    templated = {k: v for k, v in overrides.items() if has_placeholder(v)}
    allow_new = options.allow_new_params
    parameters = apply_overrides(
        source["parameters"] or {},
        {k: v for k, v in overrides.items() if k not in templated},
        allow_new=allow_new,
    )
    variables = {f"params.{k}": v for k, v in parameters.items()}
    variables.update(options.context)
    rendered = {
        key: templating.render_value(value, variables, where=f"--param {key}")
        for key, value in templated.items()
    }
    parameters = apply_overrides(parameters, rendered, allow_new=allow_new)
    merged_inputs = dict(source["inputs"] or {})
    for key, value in options.inputs.items():
        if key not in merged_inputs and not allow_new:
            raise UserError(f"--input {key}: the template has no such input")
        merged_inputs[key] = templating.render(value, variables, where=f"--input {key}")
    spec = source["spec"]
    if options.params or options.inputs:
        check_placeholders(spec.get("args") or [], spec.get("env") or {}, parameters, merged_inputs)
    check_input_refs(conn, merged_inputs, parameters)
    values = {
        "id": uuid.uuid4().hex,
        "name": check_name(options.name) if options.name else source["name"],
        "type": source["type"],
        "status": "draft",
        "comment": source["comment"],
        "kind": RUN,
        "template_id": source["id"] if source["kind"] == TEMPLATE else source["template"],
        "parent_id": source["id"],
        **cause_columns(options.trigger),
        "queue": _queue(options.queue) if options.queue else source["queue"],
        "priority": "normal",
        "created_at": utcnow(),
        "spec": dict(spec),
        "parameters": parameters,
        "inputs": merged_inputs,
        "resolved_inputs": {},
        "metrics": {},
    }
    # Tags are rendered like the other fields: a trigger's `from-${dataset.version}`.
    rendered_tags = (templating.render(t, variables, where=f"--tag {t}") for t in options.tags)
    return values, sorted({check_tag(t) for t in rendered_tags})


def has_placeholder(value: Any) -> bool:
    """Whether an override holds `${...}` (or the `$${` escape) anywhere."""
    if isinstance(value, str):
        return bool(templating.placeholders(value)) or "$${" in value
    if isinstance(value, list):
        return any(has_placeholder(v) for v in value)
    if isinstance(value, dict):
        return any(has_placeholder(v) for v in value.values())
    return False


def _queue(name: str) -> str:
    """`--queue` of a clone: a bad name is the user's mistake (exit 2), not a traceback."""
    try:
        return check_queue(name)
    except ValueError as exc:
        raise UserError(f"--queue: {exc}") from None
