"""The blob store interface: content-addressed, immutable objects named by their sha256.

A blob's key is derived from its hash alone (`blob_key`), so a blob already stored by any
dataset version is never uploaded again, and a worker can fetch any file or manifest knowing
only its hash. Backends: `LocalBlobStore` (a directory), `S3BlobStore` (boto3, any
S3-compatible endpoint) and `MemoryBlobStore` (tests of pure logic).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from orchestrator.errors import IntegrityError

BLOB_PREFIX = "blobs"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024
TEMP_PREFIX = ".tmp-"
"""Temporary files of writes in progress start with this; blobs never do."""
STALE_PARTIAL_S = 6 * 3600
"""Age after which a temporary file of an interrupted write is garbage."""
UPLOAD_WORKERS = 8
"""Concurrent blob uploads in `put_many`."""

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just transferred."""


@dataclass(frozen=True)
class StoredBlob:
    """A blob as storage lists it: its hash, size and when it was written."""

    sha256: str
    size: int
    modified: float
    """When the blob was stored, in seconds since the epoch (the storage's own clock)."""


def blob_key(sha256: str) -> str:
    """The storage key of the blob with this hash, e.g. `blobs/ab/abcd...`."""
    if not _SHA256.match(sha256):
        raise IntegrityError(f"not a sha256 hex digest: {sha256!r}")
    return f"{BLOB_PREFIX}/{sha256[:2]}/{sha256}"


def is_sha256(text: str) -> bool:
    """Whether `text` is a lowercase hex sha256 digest, as blob names are."""
    return bool(_SHA256.match(text))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def write_verified(
    source: BinaryIO,
    dest: Path,
    sha256: str,
    *,
    what: str,
    progress: ProgressCallback | None = None,
    mode: int = 0o644,
    fsync: bool = True,
) -> None:
    """Copy `source` to `dest` atomically, checking that the bytes hash to `sha256`.

    The bytes go to a temporary file beside `dest` (same directory, so the final rename is
    atomic), are fsynced, get `mode`, and only then replace `dest`: a reader never sees a partial
    or unverified file, and concurrent writers of the same content both succeed. `fsync=False`
    leaves durability to the caller (one filesystem sync after a batch costs far less than
    one per file). On a hash
    mismatch nothing is left behind and `IntegrityError` starts with `what`, which says what was
    read and what the mismatch means there ("x.bin changed since it was hashed", say).
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=TEMP_PREFIX)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != sha256:
            raise IntegrityError(f"{what}: expected sha256 {sha256}, content hashes to {actual}")
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class BlobStore(abc.ABC):
    """Immutable content-addressed blobs. Implementations must be safe to share across threads
    and across processes on many machines: a `put` is atomic (readers never see a partial blob)
    and two writers of the same blob both succeed.

    A `put` of a blob already stored refreshes its age (`StoredBlob.modified`): whoever stored
    it again names it in a row only later (a worker's report is ingested after its uploads),
    and `storage gc` keeps unreferenced blobs only while they are younger than its grace
    period."""

    url: str
    """Where the blobs live, with any credential removed (safe to print)."""

    @abc.abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""

    def missing(self, hashes: Iterable[str]) -> set[str]:
        """The subset of `hashes` not stored yet. Backends may batch this."""
        return {h for h in set(hashes) if not self.exists(h)}

    @abc.abstractmethod
    def put_file(self, sha256: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Store the file at `path` as the blob `sha256` (its content must hash to it)."""

    def put_many(
        self,
        items: Sequence[tuple[str, Callable[[], Path]]],
        progress: ProgressCallback | None = None,
        workers: int = UPLOAD_WORKERS,
    ) -> None:
        """Store many blobs concurrently. Each item is (sha256, a callable returning the file
        to read), so callers can check a source just before it is read. Threads help both
        backends: S3 is latency-bound per request, and a local disk batches concurrent fsyncs
        into one journal commit. The first error stops the rest and is raised."""
        if not items:
            return
        failed = threading.Event()

        def run(batch: Sequence[tuple[str, Callable[[], Path]]]) -> None:
            for sha, source in batch:
                if failed.is_set():
                    return
                try:
                    self._put_one(sha, source, progress)
                except BaseException:
                    failed.set()
                    raise

        # One task per thread over an interleaved slice: 10,000 tiny futures cost more in
        # executor bookkeeping than the uploads themselves.
        count = max(1, min(workers, len(items)))
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="upload") as pool:
            futures = [pool.submit(run, items[i::count]) for i in range(count)]
        for future in futures:
            future.result()

    def _put_one(
        self, sha256: str, source: Callable[[], Path], progress: ProgressCallback | None
    ) -> None:
        self.put_file(sha256, source(), progress)

    @abc.abstractmethod
    def put_bytes(self, sha256: str, data: bytes) -> None:
        """Store `data` as the blob `sha256`."""

    @abc.abstractmethod
    def get_file(self, sha256: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Write the blob to `dest` atomically (a temporary file renamed into place) and
        verify its hash; raise `IntegrityError` on a mismatch and `NotFound` if missing."""

    @abc.abstractmethod
    def get_bytes(self, sha256: str) -> bytes:
        """The blob's content, verified against its hash."""

    @abc.abstractmethod
    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every stored blob with its size and age (for garbage collection)."""

    def iter_hashes(self) -> Iterator[str]:
        """Every stored blob's hash."""
        return (blob.sha256 for blob in self.iter_blobs())

    @abc.abstractmethod
    def delete(self, hashes: Iterable[str]) -> int:
        """Remove these blobs; return how many were removed. Only `storage gc` calls this."""

    def remove_partial(self, older_than: float = STALE_PARTIAL_S, *, dry_run: bool = False) -> int:
        """Remove what interrupted writes left behind, if the backend can leave anything;
        return how many were removed (with `dry_run`, how many would be). Only writes older
        than `older_than` seconds are taken, so a write in progress elsewhere is never cut
        short."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most backends
        """Release network connections, if any; the store is not used afterwards."""
