"""Cached Python environments, keyed by what they contain.

Layout under `root`:

    <key>/                    a virtual environment; complete once it holds the marker
    <key>/.retrain-complete   JSON written last by a successful build (its mtime is the LRU clock)
    <key>.lock                lock file, so concurrent jobs build one key only once
    <key>.use.lock            shared lock held by every job running in the environment
    .tmp-<key>-<random>/      a build (or an eviction) in progress, removed when it ends

The key (`env_key`) hashes the interpreter's version, platform and path and the normalized pinned
requirement lines, so two jobs that need the same packages share one environment. A hit only
reads the marker (no subprocess). A miss builds under the key's lock: with uv the venv is made
`--relocatable` in a temporary directory and renamed into place, so it appears complete or not
at all; with the pip fallback (plain venvs cannot move) it is built in place and only the
marker makes it count as complete. A failed build leaves nothing behind.

A job holds its environment for its whole life (`acquire` returns an `EnvLease`): a shared
lock that eviction must take exclusively, so only unused environments are ever removed, the
least recently used first (the marker's mtime, touched when a job takes and gives back its
lease). The lock is taken before the hit is checked, so an environment cannot disappear
between a job finding it and using it; the kernel drops it when a job's process dies.

A build never runs a package's code as the worker. Packages come as wheels only (`uv pip
install --no-build`, pip's `--only-binary=:all:`, and a direct URL that is not a wheel is
refused before any tool runs): building an sdist, a local folder or a git URL runs the
package's own build backend, so a pin that needs one fails with a message naming it and the
operator's opt-in (`retrain worker --allow-builds`). Every step runs with an allow-listed
environment (`build_environment`: no cloud keys, no `RETRAIN_*`), and once the new
environment exists (an installed wheel's `.pth` file runs whenever its interpreter starts, as
the listing of what is installed does) under the worker's `confine` hook: the job sandbox's
confinement, writing only the build's folders and the tool's cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from filelock import FileLock, Timeout
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from orchestrator.errors import RetrainError
from orchestrator.redact import redact_url

if TYPE_CHECKING:
    from workers.sandbox_exec import Confinement

MARKER = ".retrain-complete"
"""File name of the completion marker inside an environment."""

KEY_LENGTH = 24
_KEY_FORMAT = 2  # bump to invalidate every cached environment after a layout change

Tool = Literal["uv", "pip"]
LogCallback = Callable[[str], None]
Confine = Callable[[Sequence[Path]], "Confinement | None"]
"""Given the folders a build step may write, what confines it (None: nothing to do)."""

ALLOW_BUILDS = (
    "this worker installs wheels only: building it from source would run the package's own "
    "build code; publish a wheel of it, or start the worker with --allow-builds "
    "(RETRAIN_ALLOW_BUILDS=1) to let such builds run, confined"
)
_NEEDS_BUILD = re.compile(r"(?:attempted to build|Wheels are required for) `([^`]+)`")
_TOOL_SETTINGS = ("UV_", "PIP_")

_CREATE = "creating the environment"
_INSTALL = "installing requirements"
_FREEZE = "listing installed packages"
_TAIL_LINES = 15

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?t?")


class EnvBuildError(RetrainError):
    """An environment could not be built; the message names the step and the tool's output."""


@dataclass(frozen=True)
class EnvResult:
    """A ready environment: where it is, its interpreter, and what is installed in it."""

    key: str
    path: Path
    python: Path
    hit: bool
    build_seconds: float
    frozen: list[str] = field(default_factory=list)
    tool: Tool = "uv"
    waited_seconds: float = 0.0
    """Time spent waiting for another job's build of the same key (a hit after a wait is
    not free, and a 0.0 s build would hide it)."""


class _UseLock:
    """`<key>.use.lock`: flock, shared by the jobs using an environment, exclusive (and never
    waited for) by eviction. A plain fcntl lock: filelock has no shared mode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, shared: bool) -> bool:
        """Take the lock; shared blocks (eviction holds it only for a rename), exclusive
        returns False at once if anyone holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock


class EnvLease:
    """A ready environment held for a job's life: while any lease on it is held, eviction
    leaves it alone. Release it (or leave the `with` block) when the job has ended."""

    def __init__(self, result: EnvResult, lock: _UseLock) -> None:
        self.result = result
        self._lock = lock

    def release(self) -> None:
        """Give the environment back, counting this as its latest use; safe to repeat."""
        if not self._lock.held:
            return
        with contextlib.suppress(OSError):
            os.utime(self.result.path / MARKER)  # the LRU clock: used until now
        self._lock.release()

    def __enter__(self) -> EnvLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(frozen=True)
class _Interpreter:
    version: str  # "3.11" (with a "t" suffix for a free-threaded build)
    platform: str  # implementation and platform, e.g. "cpython-linux-x86_64"
    executable: str  # what to hand to uv / run for `-m venv`

    @property
    def base(self) -> str:
        """The real path of the interpreter, when one is named by path ("" for a version
        that uv finds, the same on every worker that has it)."""
        if os.sep not in self.executable:
            return ""
        return os.path.realpath(self.executable)


def normalize_requirements(requirements: Sequence[str]) -> list[str]:
    """Requirement lines in canonical form: stripped, comments and blanks dropped, the
    distribution name canonicalized (lowercase, `-` separators), sorted, duplicates removed."""
    lines: set[str] = set()
    for raw in requirements:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = _INLINE_COMMENT.sub("", line)
        if not line.startswith("-"):
            match = _NAME.match(line)
            if match:
                line = canonicalize_name(match.group(0)) + line[match.end() :]
        lines.add(" ".join(line.split()))
    return sorted(lines)


def current_platform_tag() -> str:
    """This interpreter's implementation and platform, e.g. `cpython-linux-x86_64`."""
    return f"{sys.implementation.name}-{sysconfig.get_platform()}"


def _current_version() -> str:
    threaded = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
    return f"{sys.version_info.major}.{sys.version_info.minor}{threaded}"


def env_key(
    python: str, platform_tag: str, requirements: Sequence[str], base: str = ""
) -> str:
    """The cache key of an environment: a hash of the Python version (major.minor), the
    platform, the normalized requirements and `base`, the real path of the interpreter it is
    made from (a virtual environment runs that one: two workers on one cache whose Pythons
    differ, a root worker's under /root and a job user's system Python, must not share). The
    order of the requirements does not matter."""
    match = _VERSION.fullmatch(python.strip())
    version = python.strip()
    if match:
        version = f"{match.group(1)}.{match.group(2)}" + ("t" if version.endswith("t") else "")
    canonical = json.dumps(
        {
            "format": _KEY_FORMAT,
            "python": version,
            "platform": platform_tag,
            "requirements": normalize_requirements(requirements),
            "base": base,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def venv_python(venv: Path) -> Path:
    """The interpreter of the virtual environment at `venv`."""
    if os.name == "nt":  # pragma: no cover - workers run on Linux
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def find_uv() -> str | None:
    """The uv executable (the `uv` Python package's, else one on PATH), or None."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


class EnvCache:
    """Environments under `root`, built on first use and shared by every job on the machine.

    `max_envs` and `max_bytes` bound the cache (`RETRAIN_ENV_CACHE_MAX_COUNT` / `_MAX_BYTES`);
    after each build the least recently used environments beyond either bound are removed,
    never the one just built, one being built, nor one a job holds (`acquire`): the cache may
    stay over a bound while its environments are in use. `tool` forces `"uv"` or `"pip"`;
    `"auto"` uses uv when it is installed. `timeout` bounds each step of a build, in seconds.
    `allow_builds` lets packages be built from source (their build code runs); `confine`
    confines the build steps that may run a package's code (see the module docstring).
    """

    def __init__(
        self,
        root: Path,
        *,
        max_envs: int = 20,
        max_bytes: int | None = None,
        tool: Literal["auto", "uv", "pip"] = "auto",
        timeout: float = 3600.0,
        allow_builds: bool = False,
        confine: Confine | None = None,
    ) -> None:
        if max_envs < 1:
            raise ValueError("max_envs must be at least 1")
        self.root = Path(root)
        self.max_envs = max_envs
        self.max_bytes = max_bytes
        self.tool = tool
        self.timeout = timeout
        self.allow_builds = allow_builds
        self.confine = confine
        self._interpreters: dict[str, _Interpreter] = {}
        self._interpreters_lock = threading.Lock()

    # -- public API -------------------------------------------------------------------------

    def key_for(self, requirements: Sequence[str], python: str | None = None) -> str:
        """The key `ensure` would use for these requirements and interpreter."""
        interpreter = self._interpreter(python)
        return env_key(interpreter.version, interpreter.platform, requirements, interpreter.base)

    def path_for(self, key: str) -> Path:
        return self.root / key

    def ensure(
        self,
        requirements: Sequence[str],
        *,
        python: str | None = None,
        log: LogCallback | None = None,
    ) -> EnvResult:
        """A ready environment holding `requirements`, built first if it is not cached; not
        held afterwards (a job uses `acquire`)."""
        with self.acquire(requirements, python=python, log=log) as lease:
            return lease.result

    def acquire(
        self,
        requirements: Sequence[str],
        *,
        python: str | None = None,
        log: LogCallback | None = None,
    ) -> EnvLease:
        """A ready environment holding `requirements`, built first if it is not cached, and
        held (shared with other jobs) until the lease is released.

        `python` is an interpreter version (`"3.11"`) or an executable's path or name; the
        default is the interpreter running this code. Raises `EnvBuildError` when the build
        fails; nothing half-built remains.
        """
        say = log or _ignore
        reqs = normalize_requirements(requirements)
        interpreter = self._interpreter(python)
        key = env_key(interpreter.version, interpreter.platform, reqs, interpreter.base)
        self.root.mkdir(parents=True, exist_ok=True)
        # Held before the hit is checked: once found, the environment cannot be evicted.
        lock = _UseLock(self.root / f"{key}.use.lock")
        lock.acquire(shared=True)
        try:
            return EnvLease(self._ensure(key, interpreter, reqs, say), lock)
        except BaseException:
            lock.release()
            raise

    def _ensure(
        self, key: str, interpreter: _Interpreter, reqs: list[str], say: LogCallback
    ) -> EnvResult:
        final = self.root / key
        cached = self._hit(final, key)
        if cached is not None:
            say(f"environment {key}: cached at {final}")
            return cached
        build_lock = FileLock(self.root / f"{key}.lock")
        waited = 0.0
        try:
            build_lock.acquire(timeout=0)
        except Timeout:
            say(f"environment {key}: waiting for another job's build of it")
            start = time.monotonic()
            build_lock.acquire()
            waited = time.monotonic() - start
        with build_lock:
            cached = self._hit(final, key, waited)  # built by another job while we waited
            if cached is not None:
                say(
                    f"environment {key}: built by another job while this one waited "
                    f"{waited:.1f} s, cached at {final}"
                )
                return cached
            self._clear_leftovers(key, final)
            if not self.allow_builds:
                _refuse_source_urls(key, reqs)
            tool: Tool = self._choose_tool()
            say(f"environment {key}: building with {tool} (python {interpreter.version})")
            start = time.monotonic()
            if tool == "uv":
                frozen = self._build_uv(key, final, interpreter, reqs, say)
            else:
                frozen = self._build_pip(key, final, interpreter, reqs, say)
            seconds = time.monotonic() - start
            say(f"environment {key}: built in {seconds:.1f} s")
        self.evict(keep=(key,))
        return EnvResult(
            key=key,
            path=final,
            python=venv_python(final),
            hit=False,
            build_seconds=seconds,
            frozen=frozen,
            tool=tool,
            waited_seconds=waited,
        )

    def evict(self, keep: Collection[str] = ()) -> list[str]:
        """Remove least recently used environments beyond `max_envs` / `max_bytes`; returns
        the removed keys. Environments in `keep`, being built or held by a job are skipped."""
        entries: list[tuple[float, str, int]] = []
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        for child in children:
            if child.name.startswith(".") or not child.is_dir():
                continue
            marker = child / MARKER
            try:
                mtime = marker.stat().st_mtime
                size = int(json.loads(marker.read_text()).get("bytes", 0))
            except (OSError, ValueError, AttributeError):
                continue
            entries.append((mtime, child.name, size))
        entries.sort()
        count = len(entries)
        total = sum(size for _mtime, _name, size in entries)
        removed: list[str] = []
        for _mtime, name, size in entries:
            over_bytes = self.max_bytes is not None and total > self.max_bytes
            if count <= self.max_envs and not over_bytes:
                break
            if name in keep:
                continue
            if self._remove_env(name):
                count -= 1
                total -= size
                removed.append(name)
        return removed

    # -- hits -------------------------------------------------------------------------------

    def _hit(self, final: Path, key: str, waited: float = 0.0) -> EnvResult | None:
        marker = final / MARKER
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        with contextlib.suppress(OSError):
            os.utime(marker)  # the LRU clock
        tool: Tool = "pip" if data.get("tool") == "pip" else "uv"
        return EnvResult(
            key=key,
            path=final,
            python=venv_python(final),
            hit=True,
            build_seconds=0.0,
            frozen=[str(line) for line in data.get("frozen", [])],
            tool=tool,
            waited_seconds=waited,
        )

    # -- builds -----------------------------------------------------------------------------

    def _choose_tool(self) -> Tool:
        if self.tool == "pip":
            return "pip"
        if find_uv() is not None:
            return "uv"
        if self.tool == "uv":
            raise EnvBuildError("uv was requested for building environments but is not installed")
        return "pip"

    def _clear_leftovers(self, key: str, final: Path) -> None:
        """Remove what a crashed build of `key` left (we hold its lock, so nobody else is
        building it): temporary directories and an unfinished environment."""
        for stale in self.root.glob(f".tmp-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists() or final.is_symlink():
            _remove(final)

    def _build_uv(
        self, key: str, final: Path, interpreter: _Interpreter, reqs: list[str], say: LogCallback
    ) -> list[str]:
        uv = find_uv()
        if uv is None:
            raise EnvBuildError(f"environment {key}: uv is not installed")
        build = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{key}-"))
        confinement: Confinement | None = None
        try:
            venv = build / "venv"
            reqfile = build / "requirements.txt"
            reqfile.write_text("".join(f"{line}\n" for line in reqs))
            env = build_environment(os.environ, build / "tmp")
            self._run(
                [
                    uv,
                    "venv",
                    "--no-progress",
                    "--relocatable",
                    "--python",
                    interpreter.executable,
                    str(venv),
                ],
                key,
                _CREATE,
                "uv",
                say,
                env,
            )
            python = str(venv_python(venv))
            confinement = self._confinement([build, *self._uv_cache(uv, env)])
            if reqs:
                install = [uv, "pip", "install", "--no-progress", "--python", python]
                if not self.allow_builds:
                    install.append("--no-build")
                try:
                    self._run(
                        [*install, "-r", str(reqfile)], key, _INSTALL, "uv", say, env, confinement
                    )
                except EnvBuildError as exc:
                    found = _NEEDS_BUILD.search(str(exc))
                    if found is None or self.allow_builds:
                        raise
                    raise EnvBuildError(
                        f"environment {key}: {_INSTALL} failed: {found.group(1)} has no wheel "
                        f"for this platform; {ALLOW_BUILDS}"
                    ) from None
            frozen = self._freeze(
                [uv, "pip", "freeze", "--python", python], key, "uv", env, confinement
            )
            self._write_marker(venv, key, interpreter, reqs, frozen, "uv")
            os.rename(venv, final)
        finally:
            if confinement is not None:
                confinement.close()
            shutil.rmtree(build, ignore_errors=True)
        return frozen

    def _build_pip(
        self, key: str, final: Path, interpreter: _Interpreter, reqs: list[str], say: LogCallback
    ) -> list[str]:
        executable = interpreter.executable
        if _VERSION.fullmatch(executable):
            found = shutil.which(f"python{executable}")
            if found is None:
                raise EnvBuildError(
                    f"environment {key}: {_CREATE} failed: no python{executable} on PATH "
                    "(pip cannot fetch interpreters; install uv or pass an interpreter path)"
                )
            executable = found
        build = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{key}-"))
        confinement: Confinement | None = None
        try:
            reqfile = build / "requirements.txt"
            reqfile.write_text("".join(f"{line}\n" for line in reqs))
            env = build_environment(os.environ, build / "tmp")
            # Plain venvs hold absolute paths, so this one is built where it will stay; the
            # marker, written last, is what makes it count as complete.
            self._run([executable, "-m", "venv", str(final)], key, _CREATE, "pip", say, env)
            python = str(venv_python(final))
            confinement = self._confinement([build, final, _pip_cache(env)])
            pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
            if reqs:
                install = [*pip, "install", "--progress-bar", "off"]
                if not self.allow_builds:
                    install.append("--only-binary=:all:")
                try:
                    self._run(
                        [*install, "-r", str(reqfile)], key, _INSTALL, "pip", say, env, confinement
                    )
                except EnvBuildError as exc:
                    if self.allow_builds:
                        raise
                    raise EnvBuildError(f"{exc}\n({ALLOW_BUILDS})") from None
            frozen = self._freeze([*pip, "freeze"], key, "pip", env, confinement)
            self._write_marker(final, key, interpreter, reqs, frozen, "pip")
        except BaseException:
            _remove(final)
            raise
        finally:
            if confinement is not None:
                confinement.close()
            shutil.rmtree(build, ignore_errors=True)
        return frozen

    def _confinement(self, writable: Sequence[Path]) -> Confinement | None:
        """The confinement of the steps that may run a package's code, writing only
        `writable` (made first: a rule needs its folder to exist)."""
        if self.confine is None:
            return None
        for folder in writable:
            folder.mkdir(parents=True, exist_ok=True)
        return self.confine(list(writable))

    def _uv_cache(self, uv: str, env: Mapping[str, str]) -> list[Path]:
        """uv's cache folder under `env` (it writes there), as uv itself says."""
        if self.confine is None:
            return []
        try:
            result = subprocess.run(
                [uv, "cache", "dir"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=dict(env),
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        folder = result.stdout.strip()
        return [Path(folder)] if result.returncode == 0 and folder else []

    def _run(
        self,
        command: list[str],
        key: str,
        step: str,
        tool: Tool,
        say: LogCallback,
        env: Mapping[str, str] | None = None,
        confinement: Confinement | None = None,
    ) -> None:
        """Run one build step, streaming its output to `say`; `EnvBuildError` with the last
        lines of output if it fails or runs past the timeout."""
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        timed_out = threading.Event()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=None if env is None else dict(env),
                preexec_fn=confinement,
            )
        except OSError as exc:
            raise EnvBuildError(
                f"environment {key}: {step} failed: cannot run {command[0]}: {exc.strerror or exc}"
            ) from None
        with proc:

            def kill() -> None:
                timed_out.set()
                proc.kill()

            timer = threading.Timer(self.timeout, kill)
            timer.daemon = True
            timer.start()
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = raw.rstrip("\n")
                    if line.strip():
                        tail.append(line)
                        say(line)
                returncode = proc.wait()
            finally:
                timer.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if timed_out.is_set():
            raise EnvBuildError(
                f"environment {key}: {step} failed: {tool} ran past {self.timeout:g} s"
                + _format_tail(tail)
            )
        if returncode != 0:
            raise EnvBuildError(
                f"environment {key}: {step} failed ({tool} exited with status {returncode})"
                + _format_tail(tail)
            )

    def _freeze(
        self,
        command: list[str],
        key: str,
        tool: Tool,
        env: Mapping[str, str] | None = None,
        confinement: Confinement | None = None,
    ) -> list[str]:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=None if env is None else dict(env),
                preexec_fn=confinement,
                text=True,
                errors="replace",
                timeout=min(self.timeout, 300.0),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnvBuildError(f"environment {key}: {_FREEZE} failed: {exc}") from None
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise EnvBuildError(
                f"environment {key}: {_FREEZE} failed ({tool} exited with status "
                f"{result.returncode})" + _format_tail(lines[-_TAIL_LINES:])
            )
        return [
            line.strip()
            for line in result.stdout.splitlines()
            if line.strip() and not line.startswith("#")
        ]

    def _write_marker(
        self,
        venv: Path,
        key: str,
        interpreter: _Interpreter,
        reqs: list[str],
        frozen: list[str],
        tool: Tool,
    ) -> None:
        data: dict[str, Any] = {
            "key": key,
            "python": interpreter.version,
            "platform": interpreter.platform,
            "requirements": reqs,
            "frozen": frozen,
            "tool": tool,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bytes": _tree_size(venv),
        }
        tmp = venv / f"{MARKER}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, venv / MARKER)

    # -- eviction ---------------------------------------------------------------------------

    def _remove_env(self, key: str) -> bool:
        lock = FileLock(self.root / f"{key}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return False  # being built: leave it
        in_use = _UseLock(self.root / f"{key}.use.lock")
        try:
            if not in_use.acquire(shared=False):
                return False  # a job runs in it: leave it
            path = self.root / key
            if not (path / MARKER).is_file():
                return False
            # Rename first so the environment disappears at once, then delete at leisure.
            trash = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{key}-evict-"))
            try:
                os.rename(path, trash / "venv")
            finally:
                in_use.release()  # a job waiting for it now finds it gone and builds it
                shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            in_use.release()
            lock.release()

    # -- interpreters -----------------------------------------------------------------------

    def _interpreter(self, python: str | None) -> _Interpreter:
        """Version and platform of the requested interpreter; a path is asked once (one
        subprocess), then remembered."""
        current = _current_version()
        if python is None or python.strip() in ("", current):
            return _Interpreter(current, current_platform_tag(), sys.executable)
        python = python.strip()
        match = _VERSION.fullmatch(python)
        if match:
            version = f"{match.group(1)}.{match.group(2)}" + ("t" if python.endswith("t") else "")
            if version == current:
                return _Interpreter(current, current_platform_tag(), sys.executable)
            return _Interpreter(version, current_platform_tag(), version)
        with self._interpreters_lock:
            known = self._interpreters.get(python)
        if known is not None:
            return known
        probe = (
            "import json, sys, sysconfig; print(json.dumps({"
            "'version': '%d.%d' % sys.version_info[:2]"
            " + ('t' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''),"
            "'platform': sys.implementation.name + '-' + sysconfig.get_platform(),"
            "'executable': sys.executable}))"
        )
        try:
            result = subprocess.run(
                [python, "-c", probe],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            info = json.loads(result.stdout) if result.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            info = None
        if not isinstance(info, dict):
            raise EnvBuildError(f"cannot run the Python interpreter {python!r}")
        interpreter = _Interpreter(
            str(info["version"]), str(info["platform"]), str(info["executable"] or python)
        )
        with self._interpreters_lock:
            self._interpreters[python] = interpreter
        return interpreter


def build_environment(worker_env: Mapping[str, str], tmp: Path) -> dict[str, str]:
    """What a build step sees of the worker's environment: the job's allow-list
    (`workers.jobenv`: PATH, HOME, locale, certificates, proxies without credentials), the
    uv and pip settings (`UV_*`, `PIP_*`: index, cache, find-links, and an index's
    credentials, which the tool needs), and a private tmp. Never `RETRAIN_*`, cloud keys or
    the operator's `--pass-env` names, which are for jobs."""
    from workers.jobenv import job_environment

    tmp.mkdir(parents=True, exist_ok=True)
    placed = {"TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp)}
    env = job_environment(worker_env, {}, placed)
    env.update({k: v for k, v in worker_env.items() if k.startswith(_TOOL_SETTINGS)})
    env.update(placed)
    return env


def _pip_cache(env: Mapping[str, str]) -> Path:
    """pip's cache folder under `env` (PIP_CACHE_DIR, else the XDG default)."""
    if env.get("PIP_CACHE_DIR"):
        return Path(env["PIP_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or "/", ".cache")
    return Path(base) / "pip"


def _refuse_source_urls(key: str, reqs: Sequence[str]) -> None:
    """`EnvBuildError` for the first requirement naming a URL that is not a wheel (a folder,
    an sdist, a git repository): installing it would run its build code. pip builds these
    even with `--only-binary=:all:`, so they are refused before any tool runs."""
    for line in reqs:
        options = [w for w in line.split() if w.startswith("-")]
        if any(not o.startswith("--hash=") for o in options):
            # `task create` accepts none but --hash=; a pip option such as --no-binary or
            # --find-links on a requirement line would override wheels-only (pip applies
            # requirement-file options over its command line).
            raise EnvBuildError(
                f"environment {key}: {_INSTALL} failed: the requirement {line.split()[0]!r} "
                f"carries an option other than --hash= ({options[0]}); {ALLOW_BUILDS}"
            )
        words = [w for w in line.split() if not w.startswith("--")]
        try:
            requirement = Requirement(" ".join(words))
        except InvalidRequirement:
            continue  # the tool says what is wrong with it
        if requirement.url is None:
            continue
        path = urllib.parse.urlsplit(requirement.url).path
        if not path.endswith(".whl"):
            raise EnvBuildError(
                f"environment {key}: {_INSTALL} failed: {requirement.name} comes from "
                f"{redact_url(requirement.url)}, which is not a wheel; {ALLOW_BUILDS}"
            )


def _ignore(_line: str) -> None:
    return None


def _format_tail(lines: Collection[str]) -> str:
    if not lines:
        return ""
    return ":\n" + "\n".join(f"  {line}" for line in lines)


def _tree_size(path: Path) -> int:
    """Bytes under `path`, counting each hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                continue
            seen.add(ident)
            total += st.st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
