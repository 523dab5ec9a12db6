"""`storage gc`: delete the blobs no row refers to, once they are older than a grace period.

What rows refer to comes from the caller (the store's registry, `orchestrator.store.blobrefs`),
so this module needs no database. Two rules keep gc from racing writers:

- Storage is listed before the references are read: a blob stored after the listing is not
  a candidate, whatever its row says.
- A blob younger than the grace period is kept even when no row names it yet: a finalize
  uploads its files before it commits the version, and a worker uploads a run's model, files
  and log before the scheduler ingests its report. The grace period is how long that may
  take (`RETRAIN_GC_GRACE_MINUTES`, `--grace`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Set

from pydantic import BaseModel

from orchestrator.storage.base import BlobStore

References = Callable[[], Mapping[str, Set[str]]]
"""Reads the hashes rows refer to, by kind (`dataset file`, `model`, `log`, ...)."""


class Orphan(BaseModel):
    """A blob that gc deletes (or would): no row refers to it and it is old enough."""

    sha256: str
    size: int
    age_s: float


class GcReport(BaseModel):
    """What `storage gc` found, deleted (unless a dry run) and kept."""

    deleted: bool
    """False for a dry run: nothing was removed."""
    grace_minutes: float
    orphans: list[str]
    """Unreferenced blobs older than the grace period: deleted, or would be."""
    orphan_details: list[Orphan]
    orphan_bytes: int
    recent: list[str]
    """Unreferenced blobs younger than the grace period: kept, as an upload may be in flight."""
    kept: dict[str, int]
    """Stored blobs that rows refer to, by kind of reference (a blob may count in two)."""
    partial_removed: int
    """Temporary files of interrupted writes removed (or that would be)."""


def collect_garbage(
    blobs: BlobStore,
    references: References,
    *,
    grace_minutes: float,
    dry_run: bool = False,
    now: float | None = None,
) -> GcReport:
    """Delete stored blobs that `references` does not name and that are older than
    `grace_minutes`, and stale partial writes; with `dry_run`, only report them."""
    listed = list(blobs.iter_blobs())
    refs = references()
    referenced = set().union(*refs.values()) if refs else set()
    stored = {blob.sha256 for blob in listed}
    now = time.time() if now is None else now
    cutoff = now - grace_minutes * 60
    unreferenced = [blob for blob in listed if blob.sha256 not in referenced]
    old = sorted((b for b in unreferenced if b.modified < cutoff), key=lambda b: b.sha256)
    recent = sorted(b.sha256 for b in unreferenced if b.modified >= cutoff)
    if old and not dry_run:
        # Read the references again right before deleting: a row committed since the first
        # read (a finalize that found one of these blobs already stored and reused it) keeps
        # its blob. This narrows that window; the grace period covers new uploads.
        again = references()
        still = set().union(*again.values()) if again else set()
        old = [blob for blob in old if blob.sha256 not in still]
        if old:
            blobs.delete([blob.sha256 for blob in old])
    partial = blobs.remove_partial(dry_run=dry_run)
    return GcReport(
        deleted=not dry_run,
        grace_minutes=grace_minutes,
        orphans=[blob.sha256 for blob in old],
        orphan_details=[
            Orphan(sha256=b.sha256, size=b.size, age_s=max(0.0, now - b.modified)) for b in old
        ],
        orphan_bytes=sum(blob.size for blob in old),
        recent=recent,
        kept={kind: len(hashes & stored) for kind, hashes in sorted(refs.items())},
        partial_removed=partial,
    )
