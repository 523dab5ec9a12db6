"""Blob storage in an S3 bucket (AWS or any S3-compatible endpoint: MinIO, Ceph, ...).

boto3 is imported and the client created on first use: importing boto3 costs a noticeable
fraction of a second and most CLI commands never touch storage. Credentials come from boto3's
usual chain and are never read, logged or stored here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from orchestrator.errors import IntegrityError, NotFound, PathError, StorageError
from orchestrator.redact import redact_url
from orchestrator.storage.base import (
    BLOB_PREFIX,
    BlobStore,
    ProgressCallback,
    StoredBlob,
    blob_key,
    is_sha256,
    sha256_bytes,
    write_verified,
)

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3 rejects multipart parts smaller than this (except the last one)
DELETE_BATCH = 1000  # the most keys one DeleteObjects request accepts
HEAD_LIMIT = 50  # above this many hashes, `missing()` lists keys instead of one HEAD each
LIST_PAGE = 1000  # keys per ListObjectsV2 page (the S3 maximum)

CREDENTIALS_HELP = (
    "boto3 reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), "
    "or the profile named by AWS_PROFILE in ~/.aws/credentials and ~/.aws/config "
    "(AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE move them), or an instance/container role"
)


class S3BlobStore(BlobStore):
    """Blobs as objects `<prefix>/blobs/ab/<sha256>` in `bucket`.

    Uploads of files above `multipart_threshold` go in parts of `multipart_chunksize` (default:
    the threshold, at least 5 MiB), in parallel. Failures become one-line `StorageError`s that
    name the endpoint, bucket or key; an unreachable endpoint fails within seconds.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        multipart_threshold: int = 8 * MIB,
        multipart_chunksize: int | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize or max(multipart_threshold, MIN_PART)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._endpoint_name = redact_url(endpoint_url) if endpoint_url else "AWS"
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()
        self._bucket_seen = False  # set once any request proved the bucket exists

    # -- keys -------------------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        """The object key of blob `sha256`."""
        return f"{self.prefix}/{blob_key(sha256)}" if self.prefix else blob_key(sha256)

    def _blobs_prefix(self) -> str:
        return f"{self.prefix}/{BLOB_PREFIX}/" if self.prefix else f"{BLOB_PREFIX}/"

    # -- client -----------------------------------------------------------------------------

    @property
    def client(self) -> S3Client:
        """The boto3 client, created on first use (thread-safe: sessions are not)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> S3Client:
        import boto3.session
        from botocore.config import Config

        options: dict[str, Any] = {}
        if self.endpoint_url:
            # S3-compatible services are usually addressed by path (no wildcard DNS per
            # bucket), and many reject the CRC checksums boto3 now adds by default; blobs are
            # verified end to end with sha256 anyway.
            options = {
                "s3": {"addressing_style": "path"},
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            }
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            **options,
        )
        try:
            session = boto3.session.Session()
            return session.client("s3", endpoint_url=self.endpoint_url, config=config)
        except Exception as exc:  # a broken AWS config file, an unknown AWS_PROFILE, ...
            raise StorageError(f"cannot set up an S3 client for {self.url}: {exc}") from None

    def _transfer_config(self) -> TransferConfig:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
        )

    def close(self) -> None:
        """Close the client's connections."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- BlobStore --------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        """HEAD the object; a 404 means absent (once the bucket itself is known to exist)."""
        key = self.key(sha256)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                # A HEAD response has no body, so a missing bucket also reads as a bare 404.
                self._check_bucket()
                return False
            self._raise(exc, key=key)
        self._bucket_seen = True
        return True

    def missing(self, hashes: Iterable[str]) -> set[str]:
        """The hashes not stored. Few are HEADed one by one; many are checked by listing."""
        wanted = set(hashes)
        if len(wanted) <= HEAD_LIMIT:
            return {h for h in wanted if not self.exists(h)}
        return wanted - self._present_by_listing(wanted)

    def _present_by_listing(self, hashes: set[str]) -> set[str]:
        """Which of `hashes` are stored, by listing keys in order from each wanted hash on.

        Each page (up to `LIST_PAGE` keys) answers for every wanted hash it spans, so this costs at
        most one request per wanted hash and never much more than listing the whole store.
        """
        todo = sorted(hashes)
        for sha in todo:
            blob_key(sha)  # validate before any request
        present: set[str] = set()
        i = 0
        while i < len(todo):
            sha = todo[i]
            shard = sha[:2]
            shard_prefix = self.key(sha).rsplit("/", 1)[0] + "/"
            try:
                page = self.client.list_objects_v2(
                    Bucket=self.bucket,
                    Prefix=shard_prefix,
                    # The key with its last character dropped sorts just before the key itself.
                    StartAfter=self.key(sha)[:-1],
                    MaxKeys=LIST_PAGE,
                )
            except Exception as exc:
                self._raise(exc, key=shard_prefix)
            self._bucket_seen = True
            names = [obj["Key"].rsplit("/", 1)[1] for obj in page.get("Contents", [])]
            found = set(names)
            last = names[-1] if page.get("IsTruncated") and names else None
            start = i
            while i < len(todo) and todo[i][:2] == shard and (last is None or todo[i] <= last):
                if todo[i] in found:
                    present.add(todo[i])
                i += 1
            if i == start:  # cannot happen with S3's ordering; guarantees progress regardless
                if self.exists(sha):
                    present.add(sha)
                i += 1
        return present

    def put_file(self, sha256: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Upload `path` as blob `sha256` unless it is stored already.

        What is uploaded is exactly what was hashed: small files are read once into memory,
        large ones are copied to a private temporary file while being hashed, and the upload
        reads that. Hashing the file and then letting boto3 read it again would store a file
        changed in between under the wrong hash, where no later upload would repair it.
        """
        key = self.key(sha256)
        if self.exists(sha256):
            self._refresh(key)
            return
        try:
            small = path.stat().st_size <= self.multipart_threshold
            data = path.read_bytes() if small else None
        except OSError as exc:
            raise PathError(f"cannot read {path}: {exc.strerror or exc}") from None
        what = f"{path} changed since it was hashed"
        if data is not None:
            actual = sha256_bytes(data)
            if actual != sha256:
                raise IntegrityError(
                    f"{what}: expected sha256 {sha256}, content hashes to {actual}"
                )
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
            except Exception as exc:
                self._raise(exc, key=key)
            if progress is not None:
                progress(len(data))
            return
        with tempfile.TemporaryDirectory(prefix="retrain-upload-") as spool:
            copy = Path(spool) / sha256
            with path.open("rb") as source:
                write_verified(source, copy, sha256, what=what, fsync=False)
            try:
                self.client.upload_file(
                    str(copy), self.bucket, key, Callback=progress, Config=self._transfer_config()
                )
            except Exception as exc:
                self._raise(exc, key=key)

    def put_bytes(self, sha256: str, data: bytes) -> None:
        """Upload `data` as blob `sha256` unless it is stored already."""
        key = self.key(sha256)
        actual = sha256_bytes(data)
        if actual != sha256:
            raise IntegrityError(
                f"data for blob {sha256}: expected sha256 {sha256}, content hashes to {actual}"
            )
        if self.exists(sha256):
            self._refresh(key)
            return
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:
            self._raise(exc, key=key)

    def _refresh(self, key: str) -> None:
        """Make a blob stored again look new to `storage gc` (see `BlobStore`): S3 has no
        touch, so the object is copied onto itself, which sets its LastModified. A refused
        copy (an object over 5 GiB, a policy without CopyObject) does not fail the store:
        the blob is there, and gc reads references again just before it deletes."""
        with contextlib.suppress(Exception):
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
            )

    def get_file(self, sha256: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Download to a temporary file beside `dest`, verify the hash, rename into place."""
        key = self.key(sha256)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                self.client.download_fileobj(
                    self.bucket, key, out, Callback=progress, Config=self._transfer_config()
                )
            with tmp.open("rb") as downloaded:
                write_verified(
                    downloaded, dest, sha256, what=f"blob {sha256} in {self.url} is corrupt"
                )
        except Exception as exc:
            self._raise(exc, key=key, sha256=sha256)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def get_bytes(self, sha256: str) -> bytes:
        """The blob's content, verified against its hash."""
        key = self.key(sha256)
        try:
            data = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            self._raise(exc, key=key, sha256=sha256)
        actual = sha256_bytes(data)
        if actual != sha256:
            raise IntegrityError(
                f"blob {sha256} in {self.url} is corrupt: content hashes to {actual}"
            )
        return data

    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every stored blob, listed page by page; its age is the object's LastModified."""
        prefix = self._blobs_prefix()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[1]
                    if is_sha256(name) and obj["Key"] == self.key(name):
                        yield StoredBlob(name, obj["Size"], obj["LastModified"].timestamp())
        except Exception as exc:
            self._raise(exc, key=prefix)

    def delete(self, hashes: Iterable[str]) -> int:
        """Delete the stored ones among `hashes`, 1000 per request; return how many."""
        # S3 reports absent keys as deleted, so find which exist to return a true count.
        wanted = set(hashes)
        stored = sorted(wanted - self.missing(wanted))
        for start in range(0, len(stored), DELETE_BATCH):
            batch = stored[start : start + DELETE_BATCH]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.key(h)} for h in batch], "Quiet": True},
                )
            except Exception as exc:
                self._raise(exc, key=self.key(batch[0]))
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 refused to delete {len(errors)} blob(s) from {self.url}, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        return len(stored)

    # -- errors -----------------------------------------------------------------------------

    def _check_bucket(self) -> None:
        """After a bare 404, tell a missing bucket from a missing key (HEAD has no body)."""
        if self._bucket_seen:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            self._raise(exc, key=None)
        self._bucket_seen = True

    def _raise(self, exc: BaseException, *, key: str | None, sha256: str | None = None) -> NoReturn:
        """Re-raise `exc` as a one-line retrain error naming what failed where."""
        raise self._translate(exc, key=key, sha256=sha256) from None

    def _translate(
        self, exc: BaseException, *, key: str | None, sha256: str | None
    ) -> BaseException:
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(exc, IntegrityError | NotFound | StorageError):
            return exc
        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        for cause in _chain(exc):
            if isinstance(cause, BotoConnectionError):
                return StorageError(f"cannot reach S3 endpoint {self._endpoint_name}: {cause}")
            if isinstance(cause, NoCredentialsError | PartialCredentialsError):
                return StorageError(
                    f"no usable S3 credentials for {self.url} ({cause}); " + CREDENTIALS_HELP
                )
            if isinstance(cause, ClientError):
                return self._translate_client_error(cause, where=where, sha256=sha256)
        if isinstance(exc, OSError) and not _is_boto_error(exc):
            return StorageError(f"local I/O failed while transferring {where}: {exc}")
        return StorageError(f"S3 request for {where} at {self._endpoint_name} failed: {exc}")

    def _translate_client_error(
        self, exc: Exception, *, where: str, sha256: str | None
    ) -> BaseException:
        code = _error_code(exc)
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and sha256 is None):
            return StorageError(
                f"S3 bucket {self.bucket!r} does not exist at {self._endpoint_name}"
            )
        if code in ("404", "NoSuchKey", "NotFound") and sha256 is not None:
            self._check_bucket()  # a missing bucket must not read as a missing blob
            return NotFound("blob", sha256, f"not in {self.url}")
        if code in ("403", "AccessDenied", "AllAccessDisabled"):
            return StorageError(f"access denied to {where} at {self._endpoint_name}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            return StorageError(
                f"S3 at {self._endpoint_name} rejected the credentials ({code}); "
                + CREDENTIALS_HELP
            )
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return StorageError(f"S3 request for {where} failed: {code} {message}".rstrip())


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes: boto3 wraps transfer errors (S3UploadFailedError from a
    ClientError, RetriesExceededError with `last_exception`) and we want the root."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        nxt = getattr(current, "last_exception", None)
        current = (
            nxt if isinstance(nxt, BaseException) else (current.__cause__ or current.__context__)
        )


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore `ClientError` (or '' for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _is_boto_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("botocore", "boto3", "s3transfer", "urllib3"))
