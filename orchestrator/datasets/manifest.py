"""Manifests: the full file list of a version, and how parents merge into a child.

A final version's manifest is also stored as one content-addressed JSON blob, so a worker can
materialize the version from blob storage alone, knowing only the manifest's hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import IntegrityError
from orchestrator.paths import normalize_relpath
from orchestrator.storage.base import blob_key

MANIFEST_FORMAT = "retrain.manifest/1"


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: where it goes, how big it is, and which blob holds it."""

    path: str
    size: int
    sha256: str

    def as_tuple(self) -> tuple[str, int, str]:
        return (self.path, self.size, self.sha256)


Manifest = dict[str, FileEntry]
"""Files by dataset path."""


def merge(parents: Iterable[Mapping[str, FileEntry]]) -> Manifest:
    """Merge parent manifests in order; on a path two parents share, the later parent wins."""
    merged: Manifest = {}
    for parent in parents:
        merged.update(parent)
    return merged


@dataclass(frozen=True)
class Diff:
    added: list[str]
    modified: list[str]
    removed: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "modified": self.modified, "removed": self.removed}


def diff(base: Mapping[str, FileEntry], new: Mapping[str, FileEntry]) -> Diff:
    """What `new` adds, changes (by content) and removes relative to `base`."""
    added = sorted(p for p in new if p not in base)
    removed = sorted(p for p in base if p not in new)
    modified = sorted(p for p in new if p in base and new[p].sha256 != base[p].sha256)
    return Diff(added, modified, removed)


def encode(version: Mapping[str, Any], files: Iterable[FileEntry]) -> bytes:
    """The manifest blob: canonical JSON (sorted keys and paths), so equal content hashes equal."""
    document = {
        "format": MANIFEST_FORMAT,
        "version": dict(version),
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "key": blob_key(f.sha256)}
            for f in sorted(files, key=lambda f: f.path)
        ],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[dict[str, Any], list[FileEntry]]:
    """Parse and check a manifest blob (it comes from storage: treat it as untrusted)."""
    try:
        document = json.loads(data)
        if document.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown format {document.get('format')!r}")
        files = [
            FileEntry(normalize_relpath(str(f["path"])), int(f["size"]), str(f["sha256"]))
            for f in document["files"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"invalid manifest: {exc}") from None
    return dict(document["version"]), files
