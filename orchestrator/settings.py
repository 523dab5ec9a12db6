"""Settings, read from `RETRAIN_*` environment variables; every default lives here.

Defaults make one machine work with no configuration at all: the store is a SQLite file, blobs
live in a local directory and the download cache sits beside them, all under `RETRAIN_HOME`.
Many machines share a PostgreSQL URL, an `s3://` storage URL and a Redis URL instead.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from orchestrator.defaults import ENV_PREFIX, default_database_url, default_home
from orchestrator.errors import ConfigError
from orchestrator.redact import redact_mapping, redact_url

STORAGE_SCHEMES = ("file", "s3")
REDIS_SCHEMES = ("redis", "rediss", "unix")
HTTP = ("http", "https")
DATABASE_DIALECTS = ("sqlite", "postgresql")
DATABASE_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg2"}
"""The driver retrain ships per dialect (store/db.py names it where a URL names none)."""


@dataclass
class Settings:
    """Resolved settings. Build with `Settings.load()`: it reads the environment (keyword
    arguments win) and turns a bad value into a `ConfigError` naming the variable.

    A plain dataclass, not pydantic-settings: every `retrain` command reads these first, and
    a dozen variables do not need the ~100 ms (on a small machine) that importing a settings
    framework costs each command."""

    home: Path = field(default_factory=default_home)
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
    worker_secret: str | None = field(default=None, repr=False)
    """Signs job payloads and worker reports (HMAC), so Redis access alone cannot forge either.
    The scheduler, the workers and whoever enqueues runs (the CLI) need the same value; jobs
    never see it. Default: the file `<home>/worker.secret` when it exists (`retrain up` makes
    one); unset and no file: nothing is signed, and `retrain status` says so. At least 16
    characters."""
    gc_grace_minutes: float = 360.0
    """`storage gc` keeps a blob no row refers to yet while it is younger than this: a
    finalize or a worker's upload stores blobs before the row that names them is committed."""
    cache_dir: Path | None = None
    """Shared per-machine download cache, keyed by content hash. Default: `<home>/cache`."""
    env_cache_max_count: int = 20
    """A worker machine keeps at most this many job environments (`<cache>/envs`); beyond
    it the least recently used ones no running job holds are removed after each build."""
    env_cache_max_bytes: int | None = None
    """The same bound in bytes of all environments together; unset: no size bound."""

    model_fields: ClassVar[tuple[str, ...]]
    """Every setting's name (its variable is `RETRAIN_<NAME>`)."""

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read the environment; a bad value becomes a `ConfigError` naming the variable."""
        values: dict[str, Any] = {}
        folded: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            variable = f"{ENV_PREFIX}{f.name.upper()}"
            if f.name in overrides:
                raw = overrides.pop(f.name)
            else:
                # pydantic-settings read variables case-insensitively; so does this.
                raw = os.environ.get(variable)
                if raw is None:
                    folded = folded or {k.upper(): v for k, v in os.environ.items()}
                    raw = folded.get(variable)
                if raw is None:
                    continue
            try:
                values[f.name] = _convert(f.name, raw)
            except ValueError as exc:
                raise ConfigError(f"{variable}: {exc}") from None
        if overrides:
            raise TypeError(f"unknown settings: {', '.join(sorted(overrides))}")
        settings = cls(**values)
        try:
            settings._fill_defaults()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return settings

    def _fill_defaults(self) -> None:
        self.home = self.home.expanduser().absolute()
        if self.cache_dir is not None:
            self.cache_dir = self.cache_dir.expanduser().absolute()
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
        for name, value, check in checks:
            if value:
                try:
                    check(value)
                except ValueError as exc:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None

    @property
    def resolved_cache_dir(self) -> Path:
        assert self.cache_dir is not None  # filled by _fill_defaults
        return self.cache_dir

    @property
    def state_dir(self) -> Path:
        """CLI state that belongs to this machine (the last draft per directory, say)."""
        return self.home / "state"

    def model_dump(self) -> dict[str, Any]:
        """Every setting by name (as pydantic's method of that name did)."""
        return {name: getattr(self, name) for name in self.model_fields}

    def redacted(self) -> dict[str, Any]:
        """The settings as `retrain config show` prints them: no password, no secret."""
        values = {f"{ENV_PREFIX}{k.upper()}": v for k, v in self.model_dump().items()}
        values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        return redact_mapping(values)


Settings.model_fields = tuple(f.name for f in dataclasses.fields(Settings))

_PATHS = frozenset({"home", "cache_dir", "triggers_file"})
_OPTIONAL = frozenset(
    {
        "redis_url",
        "s3_endpoint_url",
        "triggers_file",
        "worker_secret",
        "cache_dir",
        "env_cache_max_bytes",
    }
)
_INTS = {"heartbeat_ttl_s": None, "env_cache_max_count": 1, "env_cache_max_bytes": 1}
"""Integer settings and their least value (None: any)."""
_FLOATS = {"gc_grace_minutes": 0.0}


def _convert(name: str, raw: Any) -> Any:
    """One setting from a variable's text (or an override's value), checked as pydantic did."""
    if name in _OPTIONAL and (raw is None or raw == ""):
        return None
    if name in _PATHS:
        return Path(raw)
    if name in _INTS:
        value = _number(raw, int, "a valid integer")
        least = _INTS[name]
        if least is not None and value < least:
            raise ValueError(f"Input should be greater than or equal to {least}")
        return value
    if name in _FLOATS:
        number = _number(raw, float, "a valid number")
        if number < _FLOATS[name]:
            raise ValueError(f"Input should be greater than or equal to {_FLOATS[name]:g}")
        return number
    value = str(raw)
    if name == "worker_secret" and len(value) < 16:
        raise ValueError("String should have at least 16 characters")
    return value


def _number(raw: Any, kind: type[Any], what: str) -> Any:
    if isinstance(raw, bool):
        raise ValueError(f"Input should be {what}")
    if isinstance(raw, (int, float)) and kind is float:
        return float(raw)
    if isinstance(raw, int):
        return raw
    try:
        return kind(str(raw).strip())
    except ValueError:
        raise ValueError(f"Input should be {what}, unable to parse {str(raw)!r}") from None


WORKER_SECRET_FILE = "worker.secret"  # noqa: S105 (a file's name)


def read_secret_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def ensure_worker_secret(home: Path) -> str:
    """The home's worker secret, made (random, readable by its owner only) when missing.

    Written to a file of this process's own (a fresh name, created O_EXCL, so nothing planted
    beside the secret is followed or reused), then linked into place: two commands making it
    at once agree on the one that was linked first."""
    import contextlib
    import secrets
    import tempfile

    path = home / WORKER_SECRET_FILE
    existing = read_secret_file(path)
    if existing:
        return existing
    home.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd, tmp = tempfile.mkstemp(prefix=".worker.secret.", dir=home)  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # never replaces a secret another process made meanwhile
    finally:
        os.unlink(tmp)
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
    match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\+([A-Za-z0-9_.\-]+))?://", url)
    if match is None:
        raise ValueError(
            "not a database URL; expected sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    if match.group(1) not in DATABASE_DIALECTS:
        raise ValueError(f"unsupported database {match.group(1)!r}; use sqlite or postgresql")
    dialect, driver = match.group(1), match.group(2)
    if driver is not None and driver != DATABASE_DRIVERS[dialect]:
        # `postgresql+psycopg://` was right for releases that shipped psycopg 3: say what to
        # set instead, the same URL without a driver (retrain names its own), password hidden.
        plain = dialect + url[match.end(2) :]
        raise ValueError(
            f"driver {driver!r} is not the one retrain ships for {dialect} "
            f"({DATABASE_DRIVERS[dialect]}); "
            f"name no driver: RETRAIN_DATABASE_URL={redact_url(plain)}"
        )
    if match.group(1) == "sqlite":
        path = urlsplit(url).path.lstrip("/")
        if not path or path == ":memory:" or "mode=memory" in url:
            raise ValueError(
                "an in-memory database: each retrain process (a command, the scheduler) would "
                "have its own, empty one; name a file, e.g. sqlite:////var/lib/retrain/retrain.db"
            )


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
