"""Content-addressed blob storage and the per-machine download cache.

`open_storage(settings)` picks the backend from `RETRAIN_STORAGE_URL`; `open_cache` puts the
machine's shared download cache in front of it. The S3 backend imports boto3 only when used.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from orchestrator.errors import ConfigError
from orchestrator.redact import redact_url
from orchestrator.settings import Settings
from orchestrator.storage.base import (
    BlobStore,
    ProgressCallback,
    blob_key,
    is_sha256,
    sha256_bytes,
    sha256_file,
)
from orchestrator.storage.cache import BlobCache, Entry
from orchestrator.storage.local import LocalBlobStore
from orchestrator.storage.memory import MemoryBlobStore
from orchestrator.storage.s3 import S3BlobStore

__all__ = [
    "BlobCache",
    "BlobStore",
    "Entry",
    "LocalBlobStore",
    "MemoryBlobStore",
    "ProgressCallback",
    "S3BlobStore",
    "blob_key",
    "is_sha256",
    "open_cache",
    "open_storage",
    "sha256_bytes",
    "sha256_file",
]


def open_storage(settings: Settings) -> BlobStore:
    """The blob store named by `settings.storage_url` (`file:///dir` or `s3://bucket/prefix`)."""
    url = settings.storage_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        # POSIX paths: urllib.request's url2pathname is unquote here, and importing it costs
        # each dataset command http.client and the email package (about 17 ms).
        return LocalBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        return S3BlobStore(
            parts.netloc, unquote(parts.path).strip("/"), endpoint_url=settings.s3_endpoint_url
        )
    raise ConfigError(
        f"RETRAIN_STORAGE_URL: unsupported storage URL {redact_url(url)!r}; "
        "expected file:///DIR or s3://BUCKET/PREFIX"
    )


def open_cache(settings: Settings, store: BlobStore) -> BlobCache:
    """The machine's download cache (`settings.resolved_cache_dir`) in front of `store`."""
    return BlobCache(settings.resolved_cache_dir, store)
