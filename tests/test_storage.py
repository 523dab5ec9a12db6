"""Blob stores (local, S3 over real HTTP to moto, memory) and the download cache."""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from orchestrator.errors import IntegrityError, NotFound, PathError, StorageError
from orchestrator.settings import Settings
from orchestrator.storage import (
    BlobCache,
    BlobStore,
    LocalBlobStore,
    MemoryBlobStore,
    ProgressCallback,
    S3BlobStore,
    open_storage,
    sha256_bytes,
)
from orchestrator.storage import s3 as s3_module
from orchestrator.storage.base import StoredBlob

MIB = 1024 * 1024


def s3_store(bucket_url: str, endpoint: str, **kwargs: int) -> S3BlobStore:
    parts = urlsplit(bucket_url)
    return S3BlobStore(parts.netloc, parts.path, endpoint_url=endpoint, **kwargs)


@pytest.fixture(
    params=["local", pytest.param("s3", marks=pytest.mark.s3), "memory"],
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """Each backend in turn, empty."""
    backend: BlobStore
    if request.param == "local":
        backend = LocalBlobStore(tmp_path / "storage")
    elif request.param == "s3":
        backend = s3_store(
            request.getfixturevalue("s3_bucket_url"), request.getfixturevalue("s3_endpoint")
        )
    else:
        backend = MemoryBlobStore()
    yield backend
    backend.close()


def write(path: Path, data: bytes) -> tuple[Path, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, sha256_bytes(data)


def corrupt(store: BlobStore, sha: str, data: bytes) -> None:
    """Replace a stored blob's content behind the store's back."""
    if isinstance(store, LocalBlobStore):
        path = store.path(sha)
        path.chmod(0o644)
        path.write_bytes(data)
    elif isinstance(store, S3BlobStore):
        store.client.put_object(Bucket=store.bucket, Key=store.key(sha), Body=data)
    else:
        assert isinstance(store, MemoryBlobStore)
        store._blobs[sha] = data


class Counter:
    """A progress callback that adds up the bytes reported (thread-safe: s3transfer calls
    it from its worker threads)."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n


# -- the BlobStore contract, for every backend ---------------------------------------------


def test_roundtrip_and_missing(store: BlobStore, tmp_path: Path) -> None:
    src, a = write(tmp_path / "src" / "a.bin", os.urandom(300_000))
    b_data = b"manifest bytes"
    b = sha256_bytes(b_data)
    absent = sha256_bytes(b"never stored")

    uploaded = Counter()
    store.put_file(a, src, uploaded)
    store.put_bytes(b, b_data)
    assert uploaded.total == src.stat().st_size
    assert store.exists(a) and store.exists(b) and not store.exists(absent)
    assert store.missing([a, b, absent]) == {absent}
    # Enough hashes to take the batched path of backends that have one (S3 lists keys).
    many = {sha256_bytes(str(i).encode()) for i in range(120)}
    assert store.missing([*many, a, b]) == many

    dest = tmp_path / "out" / "a.bin"
    dest.parent.mkdir()
    downloaded = Counter()
    store.get_file(a, dest, downloaded)
    assert dest.read_bytes() == src.read_bytes()
    assert downloaded.total == src.stat().st_size
    assert store.get_bytes(b) == b_data

    with pytest.raises(NotFound):
        store.get_file(absent, tmp_path / "out" / "absent")
    with pytest.raises(NotFound):
        store.get_bytes(absent)

    # A stored blob whose content no longer matches its name is refused, and the
    # destination is not created.
    corrupt(store, b, b"tampered")
    with pytest.raises(IntegrityError, match=b):
        store.get_file(b, tmp_path / "out" / "b.bin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin"]
    with pytest.raises(IntegrityError):
        store.get_bytes(b)


def test_same_blob_twice_is_stored_once(store: BlobStore, tmp_path: Path) -> None:
    src, sha = write(tmp_path / "a.bin", b"x" * 10_000)
    first, second = Counter(), Counter()
    store.put_file(sha, src, first)
    before = store.path(sha).stat() if isinstance(store, LocalBlobStore) else None
    store.put_file(sha, src, second)
    store.put_bytes(sha, src.read_bytes())
    assert (first.total, second.total) == (10_000, 0)
    assert list(store.iter_hashes()) == [sha]
    if isinstance(store, LocalBlobStore):
        after = store.path(sha).stat()
        assert before is not None and after.st_ino == before.st_ino
        assert stat.S_IMODE(after.st_mode) == 0o444


def test_content_not_matching_hash_is_refused(store: BlobStore, tmp_path: Path) -> None:
    src, sha = write(tmp_path / "a.bin", b"original")
    src.write_bytes(b"edited after hashing")
    with pytest.raises(IntegrityError, match=re.escape(str(src))):
        store.put_file(sha, src)
    with pytest.raises(IntegrityError):
        store.put_bytes(sha, b"edited after hashing")
    assert not store.exists(sha)
    assert list(store.iter_hashes()) == []
    if isinstance(store, LocalBlobStore):  # no temporary file left behind either
        assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_iter_hashes_and_delete(store: BlobStore) -> None:
    blobs = {sha256_bytes(d): d for d in (b"one", b"two", b"three")}
    for sha, data in blobs.items():
        store.put_bytes(sha, data)
    assert sorted(store.iter_hashes()) == sorted(blobs)
    keep, *drop = sorted(blobs)
    assert store.delete([*drop, sha256_bytes(b"not stored")]) == 2
    assert list(store.iter_hashes()) == [keep]
    assert store.missing(blobs) == set(drop)


# -- S3 specifics -----------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_large_file_goes_multipart(s3_bucket_url: str, s3_endpoint: str, tmp_path: Path) -> None:
    store = s3_store(s3_bucket_url, s3_endpoint, multipart_threshold=5 * MIB)
    try:
        src, sha = write(tmp_path / "big.bin", os.urandom(6 * MIB))
        store.put_file(sha, src)
        etag = store.client.head_object(Bucket=store.bucket, Key=store.key(sha))["ETag"]
        assert etag.strip('"').endswith("-2")  # two parts: 5 MiB + 1 MiB
        assert store.key(sha) == f"some-prefix/blobs/{sha[:2]}/{sha}"
        dest = tmp_path / "back.bin"
        store.get_file(sha, dest)
        assert dest.read_bytes() == src.read_bytes()
    finally:
        store.close()


@pytest.mark.s3
def test_s3_missing_by_listing_across_pages(
    s3_bucket_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many stored and absent hashes in one shard (`blobs/00/`) and one-key pages, so every
    # page is truncated and the walk must resume correctly between wanted hashes.
    monkeypatch.setattr(s3_module, "LIST_PAGE", 1)
    shard = [d for d in (str(i).encode() for i in range(40_000)) if sha256_bytes(d)[:2] == "00"]
    present, absent = shard[:40], shard[40:100]
    store = s3_store(s3_bucket_url, s3_endpoint)
    try:
        for data in present:
            store.put_bytes(sha256_bytes(data), data)
        others = {sha256_bytes(f"other {i}".encode()) for i in range(30)}
        wanted = {sha256_bytes(d) for d in present + absent} | others
        assert store.missing(wanted) == {sha256_bytes(d) for d in absent} | others
    finally:
        store.close()


@pytest.mark.s3
def test_s3_unreachable_endpoint(s3_endpoint: str) -> None:
    # A port that was just free and has no listener: connections are refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    store = S3BlobStore("bucket", "prefix", endpoint_url=endpoint)
    with pytest.raises(StorageError, match=re.escape(f"cannot reach S3 endpoint {endpoint}")):
        store.exists(sha256_bytes(b"x"))
    store.close()


@pytest.mark.s3
def test_s3_missing_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    store = S3BlobStore("no-such-bucket-retrain", "p", endpoint_url=s3_endpoint)
    src, sha = write(tmp_path / "a.bin", b"data")
    try:
        # Every entry point names the bucket, including a bare-404 HEAD, which must not read
        # as "blob not found".
        for call in (
            lambda: store.put_file(sha, src),
            lambda: store.get_file(sha, tmp_path / "out.bin"),
            lambda: store.missing(sha256_bytes(str(i).encode()) for i in range(60)),
        ):
            with pytest.raises(StorageError, match="no-such-bucket-retrain"):
                call()
    finally:
        store.close()


@pytest.mark.s3
def test_s3_no_credentials(
    s3_bucket_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = s3_store(s3_bucket_url, s3_endpoint)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        store.exists(sha256_bytes(b"x"))
    store.close()


def test_open_storage_picks_backend(tmp_path: Path) -> None:
    local = open_storage(Settings.load(home=tmp_path, storage_url=(tmp_path / "s").as_uri()))
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "s"
    # A folder whose name holds a % and a space: its file:// URL is unquoted once, not twice.
    odd = tmp_path / "blobs %41 x"
    local = open_storage(Settings.load(home=tmp_path, storage_url=odd.as_uri()))
    assert isinstance(local, LocalBlobStore) and local.root == odd
    remote = open_storage(
        Settings.load(
            home=tmp_path,
            storage_url="s3://bkt/team/data/",
            s3_endpoint_url="http://127.0.0.1:9",
        )
    )
    assert isinstance(remote, S3BlobStore)
    assert (remote.bucket, remote.prefix, remote.endpoint_url) == (
        "bkt",
        "team/data",
        "http://127.0.0.1:9",
    )


# -- the download cache -------------------------------------------------------------------------


class CountingStore(BlobStore):
    """Delegates to a real store and records which blobs were downloaded."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.downloads: list[str] = []
        self._lock = threading.Lock()

    def get_file(self, sha256: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        with self._lock:
            self.downloads.append(sha256)
        self.inner.get_file(sha256, dest, progress)

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)

    def put_file(self, sha256: str, path: Path, progress: ProgressCallback | None = None) -> None:
        self.inner.put_file(sha256, path, progress)

    def put_bytes(self, sha256: str, data: bytes) -> None:
        self.inner.put_bytes(sha256, data)

    def get_bytes(self, sha256: str) -> bytes:
        return self.inner.get_bytes(sha256)

    def iter_blobs(self) -> Iterator[StoredBlob]:
        return self.inner.iter_blobs()

    def delete(self, hashes: Iterable[str]) -> int:
        return self.inner.delete(hashes)


Manifest = list[tuple[str, int, str]]


@pytest.fixture
def counting(tmp_path: Path) -> CountingStore:
    return CountingStore(LocalBlobStore(tmp_path / "storage"))


def stored(store: BlobStore, files: dict[str, bytes]) -> Manifest:
    """Put `files` into the store; return their manifest entries."""
    entries = []
    for rel, data in files.items():
        sha = sha256_bytes(data)
        store.put_bytes(sha, data)
        entries.append((rel, len(data), sha))
    return entries


def test_materialize_downloads_only_new_blobs_and_hard_links(
    counting: CountingStore, tmp_path: Path
) -> None:
    cache = BlobCache(tmp_path / "cache", counting)
    v1 = stored(counting, {"a.txt": b"alpha", "sub/b.txt": b"beta"})
    v2 = [*v1, *stored(counting, {"c.txt": b"gamma", "copy-of-a.txt": b"alpha"})]

    first = cache.materialize("v1", v1)
    assert sorted(counting.downloads) == sorted(sha for _, _, sha in v1)
    counting.downloads.clear()
    second = cache.materialize("v2", v2)
    assert counting.downloads == [sha256_bytes(b"gamma")]  # a.txt, b.txt were cached
    counting.downloads.clear()
    assert cache.materialize("v1", v1) == first  # already built: nothing fetched
    assert counting.downloads == []

    assert first == tmp_path / "cache" / "versions" / "v1"
    for root, entries in ((first, v1), (second, v2)):
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert files == sorted(rel for rel, _, _ in entries)
        for rel, _size, sha in entries:
            linked, blob = (root / rel).stat(), cache.blob_path(sha).stat()
            assert (linked.st_ino, linked.st_dev) == (blob.st_ino, blob.st_dev)
            assert linked.st_nlink > 1
            assert stat.S_IMODE(linked.st_mode) == 0o444
    assert (second / "copy-of-a.txt").read_bytes() == b"alpha"
    # No temporary directories left beside the versions.
    assert sorted(p.name for p in cache.versions_dir.iterdir()) == ["v1", "v2"]


def test_materialize_concurrently_builds_once(counting: CountingStore, tmp_path: Path) -> None:
    entries = stored(counting, {f"f{i}.bin": os.urandom(1000) for i in range(20)})
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            # A cache object per thread, as separate processes would have.
            results.append(BlobCache(tmp_path / "cache", counting).materialize("v", entries))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 4
    assert len(counting.downloads) == len(entries)


def test_materialize_rejects_escaping_path(counting: CountingStore, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", counting)
    entries = stored(counting, {"ok.txt": b"fine"})
    entries.append(("../escape", 4, sha256_bytes(b"fine")))
    with pytest.raises(PathError, match="escape"):
        cache.materialize("bad", entries)
    assert counting.downloads == []
    assert not (tmp_path / "cache" / "escape").exists()
    assert not (tmp_path / "cache" / "versions" / "bad").exists()
    versions = tmp_path / "cache" / "versions"
    assert not versions.exists() or list(versions.iterdir()) == []
    with pytest.raises(PathError):
        cache.materialize("../v", [])


def test_copy_to_gives_writable_copies(counting: CountingStore, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", counting)
    entries = stored(counting, {"a.txt": b"alpha", "d/b.txt": b"beta"})
    dest = cache.copy_to(entries, tmp_path / "work" / "checkout")
    for rel, _size, sha in entries:
        copy = dest / rel
        assert stat.S_IMODE(copy.stat().st_mode) == 0o644
        assert copy.stat().st_ino != cache.blob_path(sha).stat().st_ino
    (dest / "a.txt").write_bytes(b"edited")
    assert cache.blob_path(entries[0][2]).read_bytes() == b"alpha"  # the cache is untouched

    with pytest.raises(PathError, match="not empty"):
        cache.copy_to(entries, dest)
    counting.downloads.clear()
    cache.copy_to(entries, tmp_path / "again")  # blobs now come from the cache
    assert counting.downloads == []
