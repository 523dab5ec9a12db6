"""Cached environments (`workers.envs`), built for real with uv and pip, offline.

The package installed is a tiny wheel written by the test itself (a wheel is a zip with a
dist-info directory), found through `UV_FIND_LINKS` / `PIP_FIND_LINKS` with the index off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from tests.workers import buildcode
from workers import envs, sandbox
from workers.envs import MARKER, EnvBuildError, EnvCache, EnvResult, env_key
from workers.sandbox_exec import Confinement

TINY = "tinypkg==0.1.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
PLATFORM = "cpython-linux-x86_64"


def _write_wheel(wheelhouse: Path) -> Path:
    files = {
        "tinypkg/__init__.py": "VALUE = 42\n\ndef main():\n    print('hello from tinypkg')\n",
        "tinypkg-0.1.0.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1.0\n"
        ),
        "tinypkg-0.1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: retrain-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
        "tinypkg-0.1.0.dist-info/entry_points.txt": (
            "[console_scripts]\ntinypkg-hello = tinypkg:main\n"
        ),
    }
    record = []
    wheel = wheelhouse / "tinypkg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            data = text.encode()
            archive.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        record.append("tinypkg-0.1.0.dist-info/RECORD,,")
        archive.writestr("tinypkg-0.1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wheels")
    _write_wheel(path)
    return path


@pytest.fixture(scope="module")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, wheelhouse: Path, uv_cache: Path) -> None:
    """uv and pip find packages only in the test's wheelhouse; uv downloads no Python."""
    monkeypatch.setenv("UV_FIND_LINKS", str(wheelhouse))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(uv_cache))
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "envs"


def entries(root: Path) -> list[str]:
    """Names under the cache root, lock files left out."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def run_python(result: EnvResult, code: str) -> str:
    return subprocess.run(
        [str(result.python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def marker(result: EnvResult) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((result.path / MARKER).read_text())
    return data


def forbid_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, any attempt to find uv or start a process fails the test."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cache hit must not run a subprocess")

    monkeypatch.setattr(envs, "find_uv", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)


# -- keys ------------------------------------------------------------------------------------


def test_workers_on_different_base_interpreters_do_not_share_environments(
    tmp_path: Path,
) -> None:
    """Attacker pass: a root worker (its Python under /root) and a `--job-user` worker (a
    system Python of the same version) on one cache had the same keys, so the job user was
    given the root worker's environments, whose interpreter it cannot execute: every run
    failed. The base interpreter an environment is made from is part of its key."""
    cache = EnvCache(tmp_path / "envs")
    link = tmp_path / "python-link"
    link.symlink_to(os.path.realpath(sys.executable))
    assert cache.key_for([], str(link)) == cache.key_for([], None)  # the same interpreter
    system = Path("/usr/bin/python3")
    if not system.exists() or Path(os.path.realpath(system)) == Path(
        os.path.realpath(sys.executable)
    ):
        pytest.skip("no second interpreter here (the CI machine has one)")
    # Same version here (3.11 both), another interpreter: another environment.
    assert cache.key_for([], str(system)) != cache.key_for([], None)


def test_key_is_stable_and_ignores_order_case_comments_and_patch_version() -> None:
    key = env_key("3.11", PLATFORM, ["torch==2.3.0", "numpy==1.26.4"])
    assert len(key) == 24 and all(c in "0123456789abcdef" for c in key)
    assert key == env_key("3.11", PLATFORM, ["numpy==1.26.4", "torch==2.3.0"])
    assert key == env_key(
        "3.11.7",
        PLATFORM,
        ["# pinned", "", "  NumPy==1.26.4  ", "Torch==2.3.0  # for training", "numpy==1.26.4"],
    )
    assert env_key("3.11", PLATFORM, ["foo_bar==1.0"]) == env_key(
        "3.11", PLATFORM, ["Foo.Bar==1.0"]
    )
    others = {
        env_key("3.12", PLATFORM, ["torch==2.3.0", "numpy==1.26.4"]),
        env_key("3.11", "cpython-macosx-14.0-arm64", ["torch==2.3.0", "numpy==1.26.4"]),
        env_key("3.11", PLATFORM, ["torch==2.3.1", "numpy==1.26.4"]),
        env_key("3.11", PLATFORM, ["torch==2.3.0"]),
    }
    assert key not in others and len(others) == 4


def test_interpreter_given_by_path_or_version_has_the_same_key(root: Path) -> None:
    cache = EnvCache(root)
    key = cache.key_for([TINY])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert cache.key_for([TINY], python=version) == key
    assert cache.key_for([TINY], python=sys.executable) == key  # asks the interpreter once
    assert cache.key_for([TINY], python="2.7") != key


# -- uv --------------------------------------------------------------------------------------


def test_miss_builds_with_uv_then_hit_runs_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    cache = EnvCache(root)
    built = cache.ensure([TINY], log=lines.append)

    assert not built.hit and built.tool == "uv" and built.build_seconds > 0
    assert built.path == root / built.key and built.python == built.path / "bin" / "python"
    assert built.frozen == [TINY]
    assert run_python(built, "import tinypkg; print(tinypkg.VALUE)") == "42"
    # Built in a temporary directory and renamed: nothing may point at the old place.
    script = built.path / "bin" / "tinypkg-hello"
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "hello from tinypkg"
    assert ".tmp-" not in (built.path / "pyvenv.cfg").read_text()
    assert ".tmp-" not in script.read_text()
    assert entries(root) == [built.key]
    assert any("building with uv" in line for line in lines)
    recorded = marker(built)
    assert recorded["key"] == built.key and recorded["tool"] == "uv"
    assert recorded["requirements"] == [TINY] and recorded["frozen"] == [TINY]
    assert recorded["built_at"] and recorded["bytes"] > 0

    forbid_builds(monkeypatch)
    again = cache.ensure(["TinyPkg==0.1.0", "# same pins"])
    assert again.hit and again.path == built.path and again.key == built.key
    assert again.build_seconds == 0 and again.frozen == [TINY] and again.tool == "uv"
    assert marker(again) == recorded
    # Another process (a fresh cache object) hits as well.
    assert EnvCache(root).ensure([TINY]).hit


def test_empty_requirements_make_a_bare_environment(root: Path) -> None:
    result = EnvCache(root).ensure([])
    assert not result.hit and result.frozen == []
    assert run_python(result, "import sys; print(sys.prefix != sys.base_prefix)") == "True"


def test_broken_requirement_raises_and_leaves_nothing(root: Path) -> None:
    cache = EnvCache(root)
    with pytest.raises(EnvBuildError) as failure:
        cache.ensure(["doesnotexist==9.9"])
    message = str(failure.value)
    assert "installing requirements" in message and "uv exited" in message
    assert "doesnotexist" in message  # uv's own error lines are included
    assert entries(root) == []


def test_leftovers_of_a_crashed_build_are_cleared(root: Path) -> None:
    cache = EnvCache(root)
    key = cache.key_for([])
    (root / f".tmp-{key}-crashed" / "venv").mkdir(parents=True)
    (root / key / "bin").mkdir(parents=True)  # half-built: no marker
    result = cache.ensure([])
    assert not result.hit and entries(root) == [key]
    assert (root / key / MARKER).is_file()


def test_concurrent_ensures_of_one_key_build_once(root: Path) -> None:
    lines: list[str] = []
    guard = threading.Lock()

    def log(line: str) -> None:
        with guard:
            lines.append(line)

    start = threading.Barrier(3)

    def job(_index: int) -> EnvResult:
        start.wait()
        return EnvCache(root).ensure([TINY], log=log)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(job, range(3)))

    assert sum(1 for line in lines if "building with" in line) == 1
    assert sorted(r.hit for r in results) == [False, True, True]
    assert len({r.path for r in results}) == 1
    assert entries(root) == [results[0].key]


# -- pip fallback ----------------------------------------------------------------------------


def test_pip_fallback_builds_and_hits(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envs, "find_uv", lambda: None)
    cache = EnvCache(root)
    with pytest.raises(EnvBuildError, match="uv was requested"):
        EnvCache(root, tool="uv").ensure([TINY])

    built = cache.ensure([TINY])
    assert not built.hit and built.tool == "pip"
    assert TINY in built.frozen
    assert run_python(built, "import tinypkg; print(tinypkg.VALUE)") == "42"
    assert marker(built)["tool"] == "pip"
    assert entries(root) == [built.key]

    again = EnvCache(root, tool="pip").ensure([TINY])
    assert again.hit and again.path == built.path and again.tool == "pip"
    assert again.frozen == built.frozen


def test_pip_failure_removes_the_environment(root: Path) -> None:
    cache = EnvCache(root, tool="pip")
    with pytest.raises(EnvBuildError, match="installing requirements") as failure:
        cache.ensure(["doesnotexist==9.9"])
    assert "pip exited" in str(failure.value)
    assert entries(root) == []


# -- eviction --------------------------------------------------------------------------------


def age(result: EnvResult, seconds: float) -> None:
    """Make an environment look last used `seconds` ago."""
    when = (result.path / MARKER).stat().st_mtime - seconds
    os.utime(result.path / MARKER, (when, when))


def test_lru_eviction_removes_the_older_environment(root: Path) -> None:
    cache = EnvCache(root, max_envs=1)
    older = cache.ensure([])
    age(older, 60)
    newer = cache.ensure([TINY])
    assert entries(root) == [newer.key]
    assert not older.path.exists()


def test_a_hit_refreshes_the_lru_clock(root: Path) -> None:
    cache = EnvCache(root, max_envs=2)
    first = cache.ensure([])
    second = cache.ensure([TINY])
    age(first, 120)
    age(second, 60)
    assert cache.ensure([]).hit  # `first` is now the most recently used
    third = cache.ensure(["tinypkg==0.1.0 ; python_version > '3'"])  # another key
    assert third.key not in (first.key, second.key)
    assert sorted(entries(root)) == sorted([first.key, third.key])


def test_locked_environment_is_not_evicted(root: Path) -> None:
    cache = EnvCache(root, max_envs=1)
    busy = cache.ensure([])
    age(busy, 60)
    with FileLock(root / f"{busy.key}.lock"):
        fresh = cache.ensure([TINY])
        assert sorted(entries(root)) == sorted([busy.key, fresh.key])
    # Once free, the next eviction pass removes it.
    assert cache.evict() == [busy.key]
    assert entries(root) == [fresh.key]


def test_max_bytes_evicts_but_keeps_the_new_environment(root: Path) -> None:
    cache = EnvCache(root, max_bytes=1)
    older = cache.ensure([])
    age(older, 60)
    newer = cache.ensure([TINY])
    assert entries(root) == [newer.key]


# -- environments in use ---------------------------------------------------------------------

LEASE_HOLDER = """
import sys
from pathlib import Path
from workers.envs import EnvCache

lease = EnvCache(Path(sys.argv[1])).acquire([])
print(lease.result.key, flush=True)
sys.stdin.readline()  # hold the lease until told
lease.release()
"""


def test_an_environment_in_use_by_another_process_is_never_evicted(root: Path) -> None:
    cache = EnvCache(root, max_envs=1)
    used = cache.ensure([])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, str(root)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == used.key  # the job's lease is held
        age(used, 300)  # the least recently used: what eviction would take first

        fresh = cache.ensure([TINY])  # over the limit, and the other one is in use
        assert sorted(entries(root)) == sorted([used.key, fresh.key])
        assert run_python(used, "print('usable')") == "usable"
        age(fresh, 120)  # now the least recently used of all, and still the one to go
        assert cache.evict() == [fresh.key]
        assert entries(root) == [used.key]
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.communicate(timeout=60)
    assert holder.returncode == 0


def test_a_lease_is_taken_before_the_hit_and_given_back_once(root: Path) -> None:
    cache = EnvCache(root, max_envs=1)
    lease = cache.acquire([TINY])
    assert not lease.result.hit and lease.result.waited_seconds == 0
    with lease:
        with EnvCache(root).acquire([TINY]) as other:  # shared: many jobs at once
            assert other.result.hit
        age(lease.result, 60)
        bare = cache.ensure([])  # builds another; the leased one, older, stays
        assert sorted(entries(root)) == sorted([lease.result.key, bare.key])
        age(bare, 30)
    lease.release()  # idempotent
    # Its release counts as a use: the other one is now the least recently used.
    assert cache.evict() == [bare.key]


def test_waiting_for_another_jobs_build_is_recorded(root: Path, tmp_path: Path) -> None:
    cache = EnvCache(root)
    key = cache.key_for([TINY])
    root.mkdir()
    waiting = threading.Event()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "waiting for" in line:
            waiting.set()

    with ThreadPoolExecutor(max_workers=1) as pool:
        with FileLock(root / f"{key}.lock"):  # another job is building this key
            pending = pool.submit(cache.ensure, [TINY], log=log)
            assert waiting.wait(60), lines
            # ... and finishes: its environment appears under the key (uv's are relocatable).
            other = EnvCache(tmp_path / "elsewhere").ensure([TINY])
            os.rename(other.path, root / key)
        result = pending.result(timeout=60)

    assert result.hit and result.build_seconds == 0 and result.key == key
    assert result.waited_seconds > 0
    assert any("built by another job" in line and "waited" in line for line in lines), lines
    assert run_python(result, "import tinypkg; print(tinypkg.VALUE)") == "42"


def test_cache_limits_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.settings import Settings

    defaults = Settings.load()
    assert defaults.env_cache_max_count == 20 and defaults.env_cache_max_bytes is None
    monkeypatch.setenv("RETRAIN_ENV_CACHE_MAX_COUNT", "3")
    monkeypatch.setenv("RETRAIN_ENV_CACHE_MAX_BYTES", "5000000000")
    chosen = Settings.load()
    assert chosen.env_cache_max_count == 3 and chosen.env_cache_max_bytes == 5_000_000_000
    monkeypatch.setenv("RETRAIN_ENV_CACHE_MAX_COUNT", "0")
    with pytest.raises(ConfigError, match=r"^RETRAIN_ENV_CACHE_MAX_COUNT: "):
        Settings.load()


# -- packages that would run their own code --------------------------------------------------


def _evil_requirement(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`evilpkg` as a local folder, its sdist by URL, or a pin that only an sdist satisfies."""
    source = buildcode.evil_package(
        tmp_path / "evilpkg", tmp_path / "built-marker", tmp_path / "worker.secret"
    )
    if kind == "folder":
        return f"evilpkg @ {source.as_uri()}"
    sdist = buildcode.evil_sdist(source, tmp_path / "sdists")
    if kind == "sdist":
        return f"evilpkg @ {sdist.as_uri()}"
    monkeypatch.setenv("UV_FIND_LINKS", str(sdist.parent))
    monkeypatch.setenv("PIP_FIND_LINKS", str(sdist.parent))
    # "option" (attacker pass, third round): pip applies a requirement line's own options
    # over its command line's --only-binary.
    return "evilpkg==0.1.0 --no-binary=:all:" if kind == "option" else "evilpkg==0.1.0"


@pytest.mark.parametrize("kind", ["folder", "sdist", "pin", "option"])
@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_a_package_that_needs_building_is_refused_and_its_code_never_runs(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str, kind: str
) -> None:
    if tool == "pip":
        monkeypatch.setattr(envs, "find_uv", lambda: None)
    requirement = _evil_requirement(kind, tmp_path, monkeypatch)
    with pytest.raises(EnvBuildError) as failure:
        EnvCache(root).ensure([requirement])
    message = str(failure.value)
    assert "evilpkg" in message and "--allow-builds" in message, message
    assert not (tmp_path / "built-marker").exists(), "the package's build code ran"
    assert entries(root) == []


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_allowed_builds_run_without_the_workers_credentials(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    if tool == "pip":
        monkeypatch.setattr(envs, "find_uv", lambda: None)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("RETRAIN_WORKER_SECRET", "hunter2")
    requirement = _evil_requirement("folder", tmp_path, monkeypatch)
    built = EnvCache(root, allow_builds=True).ensure([requirement])
    seen = json.loads(run_python(built, "import evilpkg; print(evilpkg.SEEN)"))
    assert seen["aws"] is None and seen["retrain"] == [], seen
    assert json.loads((tmp_path / "built-marker").read_text())["aws"] is None


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_listing_an_environment_runs_its_code_without_the_workers_credentials(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    """A wheel needs no build, but its `.pth` file runs whenever the environment's interpreter
    starts, as it does when the build lists what is installed."""
    if tool == "pip":
        monkeypatch.setattr(envs, "find_uv", lambda: None)
    seen = tmp_path / "pth-seen"
    buildcode.pth_wheel(tmp_path / "pth-wheels", seen)
    monkeypatch.setenv("UV_FIND_LINKS", str(tmp_path / "pth-wheels"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "pth-wheels"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    built = EnvCache(root).ensure(["pthpkg==0.1.0"])
    assert built.frozen == ["pthpkg==0.1.0"]
    # Whenever the build started the new interpreter (pip's listing always does; uv's when
    # it has not cached what the interpreter is), its .pth ran with no cloud key.
    text = seen.read_text() if seen.exists() else ""
    assert "hunter2" not in text
    if tool == "pip":
        assert text.splitlines() and set(text.splitlines()) == {"None"}, text


@pytest.mark.skipif(sandbox.landlock_abi() <= 0, reason="needs Landlock")
@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_a_confined_build_reads_no_hidden_file_and_writes_only_its_own_folders(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    if tool == "pip":
        monkeypatch.setattr(envs, "find_uv", lambda: None)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    home = tmp_path / "worker-home"
    home.mkdir()
    source = buildcode.evil_package(tmp_path / "evilpkg", tmp_path / "built-marker",
                                    home / "worker.secret")
    (home / "worker.secret").write_text("s3cr3t")

    def confine(writable: Sequence[Path]) -> Confinement | None:
        return sandbox.confinement(sandbox.build_policy(writable=writable, hidden=[home]))

    built = EnvCache(root, allow_builds=True, confine=confine).ensure(
        [f"evilpkg @ {source.as_uri()}"]
    )
    seen = json.loads(run_python(built, "import evilpkg; print(evilpkg.SEEN)"))
    assert seen["secret"] == "PermissionError" and seen["marker"] == "PermissionError", seen
    assert not (tmp_path / "built-marker").exists()
