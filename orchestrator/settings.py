"""Settings, read from `RETRAIN_*` environment variables; every default lives here.

Defaults make one machine work with no configuration at all: the store is a SQLite file, blobs
live in a local directory and the download cache sits beside them, all under `RETRAIN_HOME`.
Many machines share a PostgreSQL URL, an `s3://` storage URL and a Redis URL instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.defaults import ENV_PREFIX, default_database_url, default_home
from orchestrator.errors import ConfigError
from orchestrator.redact import redact_mapping, redact_url

STORAGE_SCHEMES = ("file", "s3")
REDIS_SCHEMES = ("redis", "rediss", "unix")
HTTP = ("http", "https")
DATABASE_DIALECTS = ("sqlite", "postgresql")


class Settings(BaseSettings):
    """Resolved settings. Build with `Settings.load()` to get user-facing errors."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    home: Path = Field(default_factory=default_home)
    """Where the SQLite store, local blob storage, caches and CLI state live by default."""
    database_url: str = ""
    """SQLAlchemy URL of the store. Default: `sqlite:///<home>/retrain.db`."""
    redis_url: str | None = None
    """Redis URL for queues and wake-ups (used by the scheduler and workers)."""
    storage_url: str = ""
    """Blob storage: `file:///dir` or `s3://bucket/prefix`. Default: `file://<home>/storage`."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible service (MinIO, Ceph, ...); unset means AWS S3."""
    triggers_file: Path | None = None
    """The scheduler's triggers file; unset means `./triggers.yaml` (a `--triggers` option
    overrides both)."""
    heartbeat_ttl_s: int = 90
    """A running task whose worker sent no heartbeat for this long is failed (worker lost).
    A running job beats every third of it (at most every 20 s); the scheduler and the
    workers must agree on it."""
    worker_secret: str | None = Field(default=None, repr=False, min_length=16)
    """Signs job payloads and worker reports (HMAC), so Redis access alone cannot forge either.
    The scheduler, the workers and whoever enqueues runs (the CLI) need the same value; jobs
    never see it. Default: the file `<home>/worker.secret` when it exists (`retrain up` makes
    one); unset and no file: nothing is signed, and `retrain status` says so."""
    gc_grace_minutes: float = Field(default=360.0, ge=0)
    """`storage gc` keeps a blob no row refers to yet while it is younger than this: a
    finalize or a worker's upload stores blobs before the row that names them is committed."""
    cache_dir: Path | None = None
    """Shared per-machine download cache, keyed by content hash. Default: `<home>/cache`."""
    env_cache_max_count: int = Field(default=20, ge=1)
    """A worker machine keeps at most this many job environments (`<cache>/envs`); beyond
    it the least recently used ones no running job holds are removed after each build."""
    env_cache_max_bytes: int | None = Field(default=None, ge=1)
    """The same bound in bytes of all environments together; unset: no size bound."""

    @field_validator("home", "cache_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = default_database_url(self.home)
        if not self.storage_url:
            self.storage_url = (self.home / "storage").as_uri()
        if self.cache_dir is None:
            self.cache_dir = self.home / "cache"
        if self.worker_secret is None:
            self.worker_secret = read_secret_file(self.home / WORKER_SECRET_FILE)
        checks = [
            ("database_url", self.database_url, _check_database_url),
            ("storage_url", self.storage_url, _check_storage_url),
            ("redis_url", self.redis_url, lambda u: _check_scheme(u, REDIS_SCHEMES)),
            ("s3_endpoint_url", self.s3_endpoint_url, lambda u: _check_scheme(u, HTTP)),
        ]
        for field, value, check in checks:
            if value:
                try:
                    check(value)
                except ValueError as exc:
                    raise ValueError(f"{ENV_PREFIX}{field.upper()}: {exc}") from None
        return self

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read the environment; a bad value becomes a `ConfigError` naming the variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            if first["loc"]:
                message = f"{ENV_PREFIX}{str(first['loc'][0]).upper()}: {message}"
            raise ConfigError(message) from None

    @property
    def resolved_cache_dir(self) -> Path:
        assert self.cache_dir is not None  # filled by _fill_defaults
        return self.cache_dir

    @property
    def state_dir(self) -> Path:
        """CLI state that belongs to this machine (the last draft per directory, say)."""
        return self.home / "state"

    def redacted(self) -> dict[str, Any]:
        """The settings as `retrain config show` prints them: no password, no secret."""
        values = {f"{ENV_PREFIX}{k.upper()}": v for k, v in self.model_dump().items()}
        values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        return redact_mapping(values)


WORKER_SECRET_FILE = "worker.secret"  # noqa: S105 (a file's name)


def read_secret_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def ensure_worker_secret(home: Path) -> str:
    """The home's worker secret, made (random, readable by its owner only) when missing."""
    import secrets

    path = home / WORKER_SECRET_FILE
    existing = read_secret_file(path)
    if existing:
        return existing
    home.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    try:
        os.link(tmp, path)  # never replaces a secret another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return read_secret_file(path) or value


def _check_scheme(url: str, schemes: tuple[str, ...]) -> None:
    if urlsplit(url).scheme not in schemes:
        raise ValueError(
            f"{redact_url(url)!r} is not a valid URL here; expected "
            + " or ".join(f"{s}://..." for s in schemes)
        )


def _check_database_url(url: str) -> None:
    # SQLAlchemy's URL grammar (`dialect[+driver]://...`), read without importing SQLAlchemy:
    # workers load these settings and never the database layer.
    match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\+[A-Za-z0-9_.\-]+)?://", url)
    if match is None:
        raise ValueError(
            "not a database URL; expected sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    if match.group(1) not in DATABASE_DIALECTS:
        raise ValueError(f"unsupported database {match.group(1)!r}; use sqlite or postgresql")


def _check_storage_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in STORAGE_SCHEMES:
        raise ValueError(
            f"unsupported storage URL {redact_url(url)!r}; expected file:///DIR or s3://BUCKET/PREFIX"
        )
    if parts.scheme == "s3" and not parts.netloc:
        raise ValueError(f"{url!r} names no bucket; expected s3://BUCKET/PREFIX")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise ValueError(f"{url!r} is not an absolute file:// URL")
