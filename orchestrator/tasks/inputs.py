"""A task's dataset inputs and placeholders: checked when a task is registered or cloned,
resolved to final dataset versions when it is queued.

The dataset versions are read with `datasets.records` on a bare driver connection: the one
under a SQLAlchemy session (`driver(session)`) or one from `store.lean` (`task run`'s lean
path), so both paths run the same queries and give the same errors."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import templating
from orchestrator.datasets import records as dataset_records
from orchestrator.errors import Conflict, NotFound, UserError
from orchestrator.tasks.records import ID as ID

PARAM_REF = re.compile(r"^\$\{\s*params\.([^}]+?)\s*\}$")


def check_placeholders(
    args: Sequence[str],
    env: Mapping[str, str],
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
) -> None:
    """`${params.X}` and `${inputs.N}` in a spec's args and env name things the task has."""
    known = {f"params.{k}" for k in params} | {f"inputs.{k}" for k in inputs}
    for i, arg in enumerate(args):
        templating.check(arg, known.__contains__, where=f"args[{i}]")
    for key, value in env.items():
        templating.check(value, known.__contains__, where=f"env {key}")


def check_input_refs(conn: Any, inputs: Mapping[str, str], params: Mapping[str, Any]) -> None:
    """Each input names a dataset version that exists, or a parameter of the task."""
    for name, ref in inputs.items():
        match = PARAM_REF.match(ref)
        if match:
            if match.group(1) not in params:
                raise UserError(f"--input {name}: {ref} names no parameter of the task")
            continue
        if not ID.match(ref):
            raise UserError(
                f"--input {name}: {ref!r} is neither a dataset version id nor "
                "${params.SECTION/NAME}"
            )
        dataset_records.load(conn, ref)


def resolve_inputs(
    conn: Any, inputs: Mapping[str, str], params: Mapping[str, Any]
) -> dict[str, Any]:
    """Each input as the final dataset version it names now (frozen into the job)."""
    resolved: dict[str, Any] = {}
    for name, ref in inputs.items():
        match = PARAM_REF.match(ref)
        version_id = str(params.get(match.group(1), "")) if match else ref
        try:
            version = dataset_records.load(conn, version_id)
        except NotFound:
            raise UserError(
                f"input {name}: {ref} is {version_id!r}, which is no dataset version"
            ) from None
        if version["status"] != "final":
            raise Conflict(f"input {name}: dataset version {version_id} is a draft; finalize it")
        resolved[name] = {
            "version_id": version["id"],
            "manifest_sha256": version["manifest_sha256"],
            "project": version["project"],
            "name": version["name"],
            "version": version["version"],
        }
    return resolved
