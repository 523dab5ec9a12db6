"""A dict-backed blob store for tests of pure logic (nothing touches the disk or network)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from orchestrator.errors import IntegrityError, NotFound
from orchestrator.storage.base import (
    BlobStore,
    ProgressCallback,
    StoredBlob,
    blob_key,
    sha256_bytes,
    write_verified,
)


class MemoryBlobStore(BlobStore):
    """Blobs in a dict, guarded by a lock so threads can share one store. Same contract as
    the real backends: puts are verified against the hash, gets are verified again."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._blobs: dict[str, bytes] = {}
        self._stored_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        blob_key(sha256)  # validates the hash like the other backends do
        with self._lock:
            return sha256 in self._blobs

    def put_file(self, sha256: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Store the file's content as blob `sha256`."""
        with self._lock:
            if sha256 in self._blobs:
                self._stored_at[sha256] = time.time()  # stored again: new again
                return
        data = path.read_bytes()
        self._put(sha256, data, what=f"{path} changed since it was hashed")
        if progress is not None:
            progress(len(data))

    def put_bytes(self, sha256: str, data: bytes) -> None:
        """Store `data` as blob `sha256`."""
        self._put(sha256, data, what=f"data for blob {sha256}")

    def get_file(self, sha256: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Write the blob to `dest` atomically, verifying its hash."""
        data = self._get(sha256)
        write_verified(
            io.BytesIO(data), dest, sha256, what=f"blob {sha256} is corrupt", progress=progress
        )

    def get_bytes(self, sha256: str) -> bytes:
        """The blob's content, verified against its hash."""
        data = self._get(sha256)
        actual = sha256_bytes(data)
        if actual != sha256:
            raise IntegrityError(f"blob {sha256} is corrupt: content hashes to {actual}")
        return data

    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every stored blob (a snapshot, so callers may delete while iterating)."""
        with self._lock:
            blobs = [
                StoredBlob(sha, len(data), self._stored_at[sha])
                for sha, data in sorted(self._blobs.items())
            ]
        yield from blobs

    def delete(self, hashes: Iterable[str]) -> int:
        """Remove these blobs; return how many existed."""
        with self._lock:
            gone = [h for h in set(hashes) if self._blobs.pop(h, None) is not None]
            for sha in gone:
                del self._stored_at[sha]
            return len(gone)

    def _put(self, sha256: str, data: bytes, *, what: str) -> None:
        blob_key(sha256)
        actual = sha256_bytes(data)
        if actual != sha256:
            raise IntegrityError(f"{what}: expected sha256 {sha256}, content hashes to {actual}")
        with self._lock:
            self._blobs.setdefault(sha256, data)
            self._stored_at[sha256] = time.time()  # stored again: new again

    def _get(self, sha256: str) -> bytes:
        blob_key(sha256)
        with self._lock:
            data = self._blobs.get(sha256)
        if data is None:
            raise NotFound("blob", sha256, "not in memory store")
        return data
