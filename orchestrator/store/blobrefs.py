"""Every column of the store that refers to a blob, and how to read the blob's hash from it.

`storage gc` deletes what no row refers to, so a column that names a blob and is missing here
would have its blobs deleted under it. The registry is the one place that says which columns
matter; `tests/datasets/test_gc.py` fails when a model gains a column that could hold a
reference (long text or JSON) and is neither registered here nor listed in
`NOT_BLOB_REFERENCES` with the reason it holds none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from orchestrator.store.models import DatasetVersion, Event, Model, Task, VersionFile

# The tail of a blob's URL in any backend: `.../blobs/ab/ab12...` (see storage.base.blob_key).
_BLOB_URI = re.compile(r"(?:^|/)blobs/([0-9a-f]{2})/([0-9a-f]{64})/?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Extract = Callable[[Any], Iterator[tuple[str, str]]]
"""From a column's value, the (kind, sha256) of each blob it refers to."""


def blob_of_uri(uri: str) -> str | None:
    """The hash of the blob a URI names (`file:///.../blobs/ab/<sha>`,
    `s3://bucket/prefix/blobs/ab/<sha>`), or None for a URI outside blob storage."""
    match = _BLOB_URI.search(uri.strip())
    if match is None or not match.group(2).startswith(match.group(1)):
        return None
    return match.group(2)


def _hash(kind: str) -> Extract:
    def extract(value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, str) and _SHA256.match(value):
            yield kind, value

    return extract


def _uri(kind: str) -> Extract:
    def extract(value: Any) -> Iterator[tuple[str, str]]:
        sha = blob_of_uri(value) if isinstance(value, str) else None
        if sha is not None:
            yield kind, sha

    return extract


def _artifacts(value: Any) -> Iterator[tuple[str, str]]:
    """Task.artifacts: [{path, uri}]; the run's `output.log` is the log `retrain logs` reads."""
    for artifact in value if isinstance(value, list) else []:
        if isinstance(artifact, dict) and isinstance(artifact.get("uri"), str):
            kind = "log" if artifact.get("path") == "output.log" else "artifact"
            yield from _uri(kind)(artifact["uri"])


def _resolved_inputs(value: Any) -> Iterator[tuple[str, str]]:
    """Task.resolved_inputs: {name: {version_id, manifest_sha256, ...}}, what a run (or its
    re-run after a lost worker) materializes."""
    for ref in value.values() if isinstance(value, dict) else []:
        if isinstance(ref, dict):
            yield from _hash("dataset manifest")(ref.get("manifest_sha256"))


def _uris_anywhere(kind: str) -> Extract:
    """Every string in a JSON document that is a blob URI (a `General/model_uri` parameter
    rendered from `${model.uri}`, say)."""

    def extract(value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield from _uri(kind)(value)
        elif isinstance(value, dict):
            for item in value.values():
                yield from extract(item)
        elif isinstance(value, list):
            for item in value:
                yield from extract(item)

    return extract


def _event_payload(value: Any) -> Iterator[tuple[str, str]]:
    """Event.payload copies the entity's manifest hash or model URI at the time: the event
    log is history the scheduler and `triggers replay` read, so what it names stays."""
    if isinstance(value, dict):
        yield from _hash("dataset manifest")(value.get("manifest_sha256"))
        yield from _uri("model")(value.get("uri"))


@dataclass(frozen=True)
class BlobReference:
    """A column whose values name blobs, and how to read them."""

    column: InstrumentedAttribute[Any]
    extract: Extract
    distinct: bool = False
    """Ask the database for distinct values (cheap for plain hash columns, where many rows
    share a blob; not possible for JSON on every backend)."""

    @property
    def name(self) -> str:
        """`table.column`, as the schema names it."""
        return f"{self.column.class_.__tablename__}.{self.column.expression.name}"


BLOB_REFERENCES: tuple[BlobReference, ...] = (
    BlobReference(VersionFile.sha256, _hash("dataset file"), distinct=True),
    BlobReference(DatasetVersion.manifest_sha256, _hash("dataset manifest"), distinct=True),
    BlobReference(Model.uri, _uri("model"), distinct=True),
    BlobReference(Task.artifacts, _artifacts),
    BlobReference(Task.resolved_inputs, _resolved_inputs),
    BlobReference(Task.parameters, _uris_anywhere("parameter")),
    BlobReference(Event.payload, _event_payload),
)
"""Every column that names blobs. Task diffs are stored inline in `tasks.spec`, not as blobs."""

NOT_BLOB_REFERENCES: dict[str, str] = {
    "projects.path": "a project path",
    "datasets.name": "a dataset name",
    "dataset_versions.description": "free text",
    "dataset_versions.metadata": "user metadata; a blob is referenced by its files",
    "dataset_version_files.path": "a path inside the version",
    "dataset_version_files.source": "a local file of a draft, not uploaded yet",
    "dataset_versions.version": "a version number",
    "events.kind": "an event kind",
    "events.project": "a project path",
    "events.name": "an entity name",
    "events.tags": "tag names",
    "tasks.name": "a task name",
    "tasks.comment": "free text",
    "tasks.trigger_name": "a trigger name",
    "tasks.trigger_entity_kind": "dataset, task, model or schedule",
    "tasks.trigger_entity_id": "an entity id",
    "task_inputs.name": "an input name",
    "task_inputs.version_id": "a dataset version id; its blobs are the version's rows",
    "tasks.error": "an error message",
    "tasks.metrics": "numbers",
    "tasks.logged_params": "values the run's code logged (connect defaults, MLflow params)",
    "metric_series.name": "a metric name",
    "metric_series.points": "numbers",
    "tasks.spec": "repository, commit, entry point, pins; the diff is inline text",
    "tasks.inputs": "declared inputs (names, templates); `resolved_inputs` holds the hashes",
    "tasks.coalesced_events": "event sequence numbers",
    "tasks.environment": "environment key and package list, kept on workers, not in storage",
    "tasks.worker": "a worker name",
    "tasks.queue": "a queue name",
    "task_tags.tag": "a tag",
    "models.name": "a model name",
    "models.metadata": "user metadata; the model's blob is its `uri`",
    "model_tags.tag": "a tag",
    "dataset_version_tags.tag": "a tag",
    "trigger_firings.trigger_name": "a trigger name",
    "trigger_firings.entity_id": "an entity id",
    "trigger_firings.trigger_revision": "a digest of the trigger's definition",
    "trigger_firings.reason": "a sentence",
    "trigger_state.name": "a trigger name",
    "trigger_state.revision": "a digest of the trigger's definition",
    "scheduler_state.leader": "a scheduler name",
    "scheduler_state.config_path": "a local path",
    "scheduler_state.config_error": "an error message",
    "scheduler_state.config_problems": "messages about the loaded triggers file",
    "scheduler_state.steps": "the daemon's loop steps: names, times, errors",
    "scheduler_state.last_refused_reason": "why a worker report was refused",
}
"""Columns that could hold a blob reference by their type but hold none, and why."""


def referenced(session: Session) -> dict[str, set[str]]:
    """The hashes every row refers to, by kind (`dataset file`, `model`, `log`, ...).
    Rows are streamed, so millions of events or files do not sit in memory at once."""
    found: dict[str, set[str]] = {}
    for ref in BLOB_REFERENCES:
        query = select(ref.column).where(ref.column.is_not(None))
        if ref.distinct:
            query = query.distinct()
        for value in session.scalars(query.execution_options(yield_per=5000)):
            for kind, sha in ref.extract(value):
                found.setdefault(kind, set()).add(sha)
    return found
