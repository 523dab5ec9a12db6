"""The names a task is made of (parameters, inputs, queues), checked without pydantic: `task
run`'s bare-driver path checks overrides with these too (`tasks.spec` re-exports them)."""

from __future__ import annotations

import re

_PARAM = re.compile(r"^[^/\s]+/[^/\s]+$")
_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_queue(name: str) -> str:
    if not _QUEUE.match(name):
        raise ValueError(f"{name!r} is not a queue name (letters, digits, '_', '.', '-')")
    return name


def check_param_name(name: str) -> str:
    """`Section/name`, as ClearML users write parameters (`General/dataset_id`)."""
    if not _PARAM.match(name):
        raise ValueError(f"{name!r} is not a parameter name of the form Section/name")
    return name


def check_input_name(name: str) -> str:
    if not _INPUT_NAME.match(name):
        raise ValueError(f"input name {name!r} must be an identifier (letters, digits, '_')")
    return name
