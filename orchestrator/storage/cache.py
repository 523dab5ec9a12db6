"""The per-machine download cache: blobs fetched once, dataset versions built from hard links.

Layout under `cache_dir`:

    blobs/ab/<sha256>     read-only copies of blobs, keyed by hash (shared by every version)
    versions/<key>/       a version's file tree; each file a hard link to its cached blob
    locks/                lock files, so concurrent processes build a version only once

Everything in the cache is immutable once renamed into place, so any number of jobs on the
machine may read it at once. Jobs that must write get a real copy (`copy_to`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from orchestrator.errors import IntegrityError, PathError
from orchestrator.paths import normalize_relpath, safe_join
from orchestrator.storage.base import BlobStore, ProgressCallback, blob_key

if TYPE_CHECKING:
    from filelock import FileLock

READ_ONLY = 0o444
WRITABLE = 0o644

Entry = tuple[str, int, str]
"""A manifest entry: (relative path, size in bytes, sha256)."""

# os.link failures that mean "this filesystem or situation does not allow a hard link here":
# another device, no hard-link support, too many links to one inode, or Linux's
# protected_hardlinks refusing to link a file owned by another user (a shared cache).
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


class BlobCache:
    """A read-only, content-addressed download cache in front of a `BlobStore`."""

    def __init__(self, cache_dir: Path, store: BlobStore) -> None:
        self.cache_dir = cache_dir
        self.store = store

    @property
    def versions_dir(self) -> Path:
        """Where materialized versions live."""
        return self.cache_dir / "versions"

    def blob_path(self, sha256: str) -> Path:
        """Where the cached copy of blob `sha256` lives (whether or not it is there yet)."""
        return self.cache_dir.joinpath(*blob_key(sha256).split("/"))

    def ensure(
        self, sha256: str, size: int | None = None, progress: ProgressCallback | None = None
    ) -> Path:
        """The cached blob's path, downloading it first if it is not cached.

        Each download goes to its own temporary file and is renamed into place, so processes
        fetching the same blob at once all succeed (the last rename wins, same content).
        """
        path = self.blob_path(sha256)
        if path.is_file() and (size is None or path.stat().st_size == size):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            self.store.get_file(sha256, tmp, progress)  # verifies the hash
            actual = tmp.stat().st_size
            if size is not None and actual != size:
                raise IntegrityError(
                    f"blob {sha256} has {actual} bytes but the manifest says {size}"
                )
            os.chmod(tmp, READ_ONLY)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path

    def materialize(
        self, key: str, entries: Sequence[Entry], progress: ProgressCallback | None = None
    ) -> Path:
        """The directory `versions/<key>/` holding `entries`, built on first use.

        Only blobs not cached yet are downloaded. The tree is assembled in a temporary
        directory and renamed into place, under a per-key lock, so it appears complete or not
        at all and concurrent callers build it once. Manifest paths are untrusted: one that
        escapes the tree raises `PathError` before anything is downloaded or created.
        """
        _check_key(key)
        final = self.versions_dir / key
        if final.is_dir():
            return final
        plan = _plan(entries)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(f"version-{key}"):
            if final.is_dir():  # built by another process while we waited
                return final
            blobs = self._ensure_all(plan, progress)
            tmp = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=f".tmp-{key}-"))
            try:
                for rel, _size, sha in plan:
                    target = safe_join(tmp, rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(blobs[sha], target)
                tmp.chmod(0o755)  # mkdtemp makes it 0o700; other users on the box may read
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    def copy_to(
        self, entries: Sequence[Entry], dest: Path, progress: ProgressCallback | None = None
    ) -> Path:
        """Write a writable copy of `entries` into `dest` (created; must be absent or empty).

        Blobs are fetched into the cache first, so a later `materialize` reuses them. On
        failure `dest` is left as it was found (absent or empty).
        """
        plan = _plan(entries)
        created = not dest.exists()
        if not created:
            if not dest.is_dir():
                raise PathError(f"{dest} exists and is not a directory")
            if any(dest.iterdir()):
                raise PathError(f"{dest} is not empty; choose a new or empty directory")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            blobs = self._ensure_all(plan, progress)
            for rel, _size, sha in plan:
                target = safe_join(dest, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(blobs[sha], target)
                os.chmod(target, WRITABLE)
        except BaseException:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            else:
                for child in dest.iterdir():
                    _remove(child)
            raise
        return dest

    def _ensure_all(
        self, plan: Sequence[Entry], progress: ProgressCallback | None
    ) -> dict[str, Path]:
        blobs: dict[str, Path] = {}
        for _rel, size, sha in plan:
            if sha not in blobs:
                blobs[sha] = self.ensure(sha, size, progress)
        return blobs

    def _lock(self, name: str) -> FileLock:
        from filelock import FileLock  # ~40 ms, for what uses the cache (not `dataset add`)

        locks = self.cache_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(locks / f"{name}.lock")


def _check_key(key: str) -> None:
    """A version key names one directory: no separators, nothing hidden, no `..`."""
    if not key or key.startswith(".") or any(c in key for c in "/\\\x00") or len(key) > 200:
        raise PathError(f"invalid cache key {key!r}")


def _plan(entries: Sequence[Entry]) -> list[Entry]:
    """Validate manifest entries: normalized unique paths, no file also used as a directory,
    well-formed hashes and sizes. Raises before the caller downloads or creates anything."""
    plan: list[Entry] = []
    files: set[str] = set()
    for rel, size, sha in entries:
        clean = normalize_relpath(rel)
        blob_key(sha)  # raises IntegrityError on a malformed hash
        if not isinstance(size, int) or size < 0:
            raise IntegrityError(f"invalid size {size!r} for {clean!r} in manifest")
        if clean in files:
            raise PathError(f"manifest lists {clean!r} twice")
        files.add(clean)
        plan.append((clean, size, sha))
    for clean in files:
        for parent in PurePosixPath(clean).parents:
            if str(parent) in files:
                raise PathError(f"manifest uses {str(parent)!r} as both a file and a directory")
    return plan


def _link_or_copy(blob: Path, target: Path) -> None:
    """Hard-link `target` to the cached blob; copy (read-only) where linking is impossible."""
    try:
        os.link(blob, target)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        shutil.copyfile(blob, target)
        os.chmod(target, READ_ONLY)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
