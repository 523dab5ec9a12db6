"""Materializing a dataset version from blob storage alone: what workers do with the
manifest hash in a job's payload. No database, no SQLAlchemy import."""

from __future__ import annotations

from pathlib import Path

from orchestrator.datasets import manifest
from orchestrator.progress import NullReporter, Reporter
from orchestrator.storage.base import BlobStore
from orchestrator.storage.cache import BlobCache


def materialize(
    blobs: BlobStore, cache: BlobCache, manifest_sha256: str, reporter: Reporter | None = None
) -> Path:
    """Build a read-only local copy of a version from blob storage alone (what workers use):
    fetch the manifest blob, then the blobs the cache lacks."""
    header, entries = manifest.decode(blobs.get_bytes(manifest_sha256))
    label = f"{header.get('project')}/{header.get('name')} {header.get('version')}"
    missing = [e for e in entries if not cache.blob_path(e.sha256).exists()]
    with (reporter or NullReporter()).task(
        f"downloading {label}", sum(e.size for e in missing)
    ) as advance:
        return cache.materialize(manifest_sha256, [e.as_tuple() for e in entries], progress=advance)
