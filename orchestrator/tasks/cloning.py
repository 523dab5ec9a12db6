"""Cloning into a run: typed overrides, `${...}` rendering, inputs and tags.

The source is a template revision (the run records it as its template and parent) or another
run (`task run RUN_ID`: the run records that run as its parent and inherits its template; its
frozen commit and parameters make it an exact re-run). A run takes no tags from its source:
only the ones given (`--tags`, a trigger's `run.tags`), so `@tag` keeps naming templates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import templating
from orchestrator.datasets.validate import check_name, check_tag
from orchestrator.errors import UserError
from orchestrator.store.models import Task, TaskTag, new_id, utcnow
from orchestrator.tasks import lineage
from orchestrator.tasks.inputs import check_input_refs, check_placeholders
from orchestrator.tasks.params import apply_overrides
from orchestrator.tasks.resolution import RUN, TEMPLATE
from orchestrator.tasks.spec import ExecutionSpec, check_queue


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


def new_row(session: Session, template: Task, options: CloneOptions) -> Task:
    """The run cloned from `template` (a template revision or a run) as a draft row, added
    to the session but not flushed."""
    # Overrides without placeholders apply first, so `${params.X}` in another override
    # sees the value X has in this run, not the template's.
    overrides = dict(options.params)
    templated = {k: v for k, v in overrides.items() if has_placeholder(v)}
    allow_new = options.allow_new_params
    parameters = apply_overrides(
        template.parameters or {},
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
    merged_inputs = dict(template.inputs or {})
    for key, value in options.inputs.items():
        if key not in merged_inputs and not allow_new:
            raise UserError(f"--input {key}: the template has no such input")
        merged_inputs[key] = templating.render(value, variables, where=f"--input {key}")
    if options.params or options.inputs:
        check_placeholders(ExecutionSpec.model_validate(template.spec), parameters, merged_inputs)
    check_input_refs(session, merged_inputs, parameters)
    trigger = options.trigger
    row = Task(
        id=new_id(),
        project=template.project,
        name=check_name(options.name) if options.name else template.name,
        type=template.type,
        status="draft",
        comment=template.comment,
        kind=RUN,
        template_id=template.id if template.kind == TEMPLATE else template.template_id,
        parent_id=template.id,
        **lineage.cause_columns(trigger),
        queue=_queue(options.queue) if options.queue else template.queue,
        priority="normal",
        created_at=utcnow(),
        spec=dict(template.spec),
        parameters=parameters,
        inputs=merged_inputs,
        resolved_inputs={},
        metrics={},
    )
    # Tags are rendered like the other fields: a trigger's `from-${dataset.version}`.
    rendered_tags = (templating.render(t, variables, where=f"--tag {t}") for t in options.tags)
    new_tags = sorted({check_tag(t) for t in rendered_tags})
    row.tag_rows = [TaskTag(tag=t) for t in new_tags]
    session.add(row)
    return row


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
