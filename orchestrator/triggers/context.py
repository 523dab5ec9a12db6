"""The variables a firing renders into overrides: `${dataset.id}`, `${task.metrics.loss}`..."""

from __future__ import annotations

from typing import Any

from orchestrator.storage.base import blob_key
from orchestrator.triggers.match import EventView


def variables(event: EventView, trigger_name: str, storage_url: str = "") -> dict[str, Any]:
    """Every variable the event's source offers (see `config.SOURCE_VARIABLES`)."""
    out: dict[str, Any] = {
        "trigger.name": trigger_name,
        "event.id": event.seq,
        "event.time": event.time.isoformat(),
    }
    source, payload = event.source, event.payload
    if source == "dataset":
        manifest = payload.get("manifest_sha256")
        out.update(
            {
                "dataset.id": event.entity_id,
                "dataset.name": event.name,
                "dataset.project": event.project,
                "dataset.version": payload.get("version", ""),
                "dataset.tags": list(event.tags),
                "dataset.uri": f"{storage_url.rstrip('/')}/{blob_key(manifest)}"
                if manifest
                else "",
            }
        )
    elif source == "task":
        out.update(
            {
                "task.id": event.entity_id,
                "task.name": event.name,
                "task.project": event.project,
                "task.status": payload.get("status", event.action),
            }
        )
        for name, value in (payload.get("metrics") or {}).items():
            out[f"task.metrics.{name}"] = value
    elif source == "model":
        out.update(
            {
                "model.id": event.entity_id,
                "model.name": event.name,
                "model.project": event.project,
                "model.uri": payload.get("uri", ""),
                "model.tags": list(event.tags),
                "model.task_id": payload.get("task_id") or "",
            }
        )
        # The dataset versions the producing task trained on: evaluate on the same data.
        for name, version_id in (payload.get("inputs") or {}).items():
            out[f"model.inputs.{name}"] = version_id
    return out
