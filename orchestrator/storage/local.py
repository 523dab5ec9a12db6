"""Blob storage in a local (or network-mounted) directory: `<root>/blobs/ab/<sha256>`."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from orchestrator.errors import IntegrityError, NotFound, PathError, StorageError
from orchestrator.storage.base import (
    BLOB_PREFIX,
    STALE_PARTIAL_S,
    TEMP_PREFIX,
    UPLOAD_WORKERS,
    BlobStore,
    ProgressCallback,
    StoredBlob,
    blob_key,
    is_sha256,
    sha256_bytes,
    write_verified,
)

READ_ONLY = 0o444


class LocalBlobStore(BlobStore):
    """Blobs as read-only files under `root`. Writes go to a temporary file in the blob's own
    directory and are renamed into place, so readers never see partial blobs and two processes
    (or machines sharing an NFS mount) storing the same blob both succeed."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.url = self.root.as_uri()

    def path(self, sha256: str) -> Path:
        """Where the blob `sha256` lives (whether or not it is stored)."""
        return self.root.joinpath(*blob_key(sha256).split("/"))

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return self.path(sha256).is_file()

    def missing(self, hashes: Iterable[str]) -> set[str]:
        """The hashes not stored; one `stat` each, which is fast on a local disk."""
        return {h for h in set(hashes) if not os.path.exists(self.path(h))}

    def put_file(self, sha256: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Copy `path` in as blob `sha256`, hashing while copying: the file may have changed
        since its hash was computed, and a blob must never hold content of another hash."""
        self._put_path(sha256, path, progress, durable=True)

    def put_many(
        self,
        items: Sequence[tuple[str, Callable[[], Path]]],
        progress: ProgressCallback | None = None,
        workers: int = UPLOAD_WORKERS,
    ) -> None:
        """Write the batch without a sync per file, then sync the filesystem once: on a
        journaling filesystem each fsync is a journal commit (about 1 ms here), which made
        10,000 small files take 9 s instead of about 1 s. The caller commits the version only
        after this returns, so every blob it names is on disk first."""
        super().put_many(items, progress, workers)
        if items:
            _sync_filesystem(self.root)

    def _put_one(
        self, sha256: str, source: Callable[[], Path], progress: ProgressCallback | None
    ) -> None:
        self._put_path(sha256, source(), progress, durable=False)

    def _put_path(
        self, sha256: str, path: Path, progress: ProgressCallback | None, *, durable: bool
    ) -> None:
        dest = self.path(sha256)
        if dest.exists():
            _refresh(dest)
            return
        try:
            source = path.open("rb")
        except OSError as exc:
            raise PathError(f"cannot read {path}: {exc.strerror or exc}") from None
        with source, self._writing(dest, durable=durable):
            write_verified(
                source,
                dest,
                sha256,
                what=f"{path} changed since it was hashed",
                progress=progress,
                mode=READ_ONLY,
                fsync=durable,
            )

    def put_bytes(self, sha256: str, data: bytes) -> None:
        """Store `data` as blob `sha256` (checked against the hash)."""
        dest = self.path(sha256)
        if dest.exists():
            _refresh(dest)
            return
        with self._writing(dest):
            write_verified(
                io.BytesIO(data), dest, sha256, what="data for blob " + sha256, mode=READ_ONLY
            )

    def get_file(self, sha256: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Copy the blob to `dest` atomically, verifying its hash."""
        try:
            source = self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound("blob", sha256, f"not in {self.url}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob {sha256} in {self.url}: {exc}") from None
        with source:
            write_verified(
                source,
                dest,
                sha256,
                what=f"blob {sha256} in {self.url} is corrupt",
                progress=progress,
            )

    def get_bytes(self, sha256: str) -> bytes:
        """The blob's content, verified against its hash."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise NotFound("blob", sha256, f"not in {self.url}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob {sha256} in {self.url}: {exc}") from None
        actual = sha256_bytes(data)
        if actual != sha256:
            raise IntegrityError(
                f"blob {sha256} in {self.url} is corrupt: content hashes to {actual}"
            )
        return data

    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every stored blob, skipping temporary files of writes in progress. A blob's age is
        its file's mtime: the rename that stored it keeps the temporary file's, written just
        before."""
        top = self.root / BLOB_PREFIX
        if not top.is_dir():
            return
        for shard in sorted(top.iterdir()):
            if not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                if is_sha256(entry.name) and entry.name[:2] == shard.name:
                    try:
                        info = entry.stat()
                    except FileNotFoundError:  # deleted meanwhile
                        continue
                    yield StoredBlob(entry.name, info.st_size, info.st_mtime)

    def delete(self, hashes: Iterable[str]) -> int:
        """Unlink these blobs (a read-only file needs only a writable directory to go)."""
        removed = 0
        for sha in set(hashes):
            with contextlib.suppress(FileNotFoundError):
                self.path(sha).unlink()
                removed += 1
        return removed

    def remove_partial(self, older_than: float = STALE_PARTIAL_S, *, dry_run: bool = False) -> int:
        """Delete temporary files of writes that were killed midway (a crash during
        `dataset close`, say) once they are older than `older_than` seconds."""
        top = self.root / BLOB_PREFIX
        if not top.is_dir():
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for temp in top.glob(f"*/{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    if not dry_run:
                        temp.unlink()
                    removed += 1
        return removed

    @contextlib.contextmanager
    def _writing(self, dest: Path, *, durable: bool = True) -> Iterator[None]:
        """Create the blob's directory and turn OS errors into one-line storage errors."""
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            yield
            if durable:
                _fsync_dir(dest.parent)
        except OSError as exc:
            raise StorageError(f"cannot write blob {dest.name} to {self.url}: {exc}") from None


def _refresh(blob: Path) -> None:
    """Make a blob stored again look new to `storage gc` (see `BlobStore`). Not being allowed
    to (a blob another user stored on a shared mount) is no reason to fail the store: the
    blob is there, and gc reads references again just before it deletes."""
    with contextlib.suppress(OSError):
        os.utime(blob)


def _sync_filesystem(path: Path) -> None:
    """Flush the filesystem holding `path` to disk: Linux's syncfs(2) when the C library has
    it, else sync(2), which flushes every filesystem."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk too (POSIX only)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
