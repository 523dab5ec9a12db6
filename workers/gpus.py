"""GPU devices of this host: what exists, which ones a worker uses, and who holds each one.

A worker agent is started with `--gpus` (which devices it may use) and `--per-job N` (how many
devices one training job gets). This module turns those options into *slots* — groups of
device indices, one running job each — and claims the devices of a slot host-wide, so that two
workers on one machine (even of different users) can never hand the same GPU to two jobs.

Detection asks `nvidia-smi`; a host without it is a CPU-only host, not an error.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from orchestrator.errors import ServiceUnavailable, UserError

__all__ = [
    "Claim",
    "DeviceBusy",
    "DeviceLock",
    "Gpu",
    "claim",
    "cuda_visible_devices",
    "default_lock_dir",
    "detect",
    "parse_gpus",
    "require_free",
    "slots",
]

QUERY_ARGS = (
    "--query-gpu=index,uuid,name,memory.total",
    "--format=csv,noheader,nounits",
)
# nvidia-smi answers in well under a second; a hung driver must not hang worker start-up.
DETECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Gpu:
    """One GPU as `nvidia-smi` reports it."""

    index: int
    uuid: str
    name: str
    memory_mib: int


# --- detection ----------------------------------------------------------------------------


def detect(nvidia_smi: str = "nvidia-smi") -> list[Gpu]:
    """The GPUs of this host, ordered by index; `[]` when `nvidia_smi` is not installed.

    Raises `ServiceUnavailable` when `nvidia-smi` exists but fails (driver not loaded, say):
    such a host is meant to have GPUs, so silently running as a CPU worker would hide the fault.
    """
    executable = shutil.which(nvidia_smi)
    if executable is None:
        return []
    try:
        result = subprocess.run(
            [executable, *QUERY_ARGS],
            capture_output=True,
            text=True,
            timeout=DETECT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailable(
            f"{executable} did not answer within {DETECT_TIMEOUT_S:g} s"
        ) from exc
    except OSError as exc:
        raise ServiceUnavailable(f"cannot run {executable}: {exc}") from exc
    if result.returncode != 0:
        # nvidia-smi prints some failures ("couldn't communicate with the NVIDIA driver") on
        # stdout, not stderr, so fall back to stdout to keep the cause in the message.
        detail = _one_line(result.stderr) or _one_line(result.stdout) or "no output"
        raise ServiceUnavailable(f"{executable} failed (exit {result.returncode}): {detail}")
    return _parse_query(result.stdout, executable)


def _parse_query(output: str, executable: str) -> list[Gpu]:
    """Parse `index, uuid, name, memory.total` lines (csv, noheader, nounits)."""
    gpus: list[Gpu] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 4:
            raise ServiceUnavailable(f"{executable} printed an unexpected line: {line!r}")
        # nvidia-smi does not quote fields; a comma inside a name would split it, so the name
        # is everything between the uuid and the last field.
        index_text, uuid, memory_text = fields[0], fields[1], fields[-1]
        name = ", ".join(fields[2:-1])
        try:
            index = int(index_text)
        except ValueError:
            raise ServiceUnavailable(
                f"{executable} printed an unexpected GPU index {index_text!r} in line {line!r}"
            ) from None
        gpus.append(Gpu(index=index, uuid=_known(uuid), name=name, memory_mib=_mib(memory_text)))
    return sorted(gpus, key=lambda gpu: gpu.index)


def _known(value: str) -> str:
    """`""` for nvidia-smi's placeholders of unknown values."""
    return "" if value.upper() in {"[N/A]", "N/A", "[NOT SUPPORTED]"} else value


def _mib(text: str) -> int:
    """Memory in MiB from "81559" or "81559 MiB"; 0 when unknown ("[N/A]" on some boards)."""
    number = text.removesuffix("MiB").strip()
    try:
        return int(float(number))
    except ValueError:
        return 0


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# --- options ------------------------------------------------------------------------------


def parse_gpus(option: str, detected: list[Gpu]) -> list[int]:
    """Device indices chosen by `--gpus`: `all`, `none`, or a comma list such as `0,1,3`.

    Every listed index must exist on this host and appear once; anything else is a `UserError`
    that names the option and the indices available.
    """
    available = [gpu.index for gpu in detected]
    value = option.strip()
    if value.lower() == "all":
        return available
    if value.lower() == "none":
        return []
    chosen: list[int] = []
    for item in (part.strip() for part in value.split(",")):
        if not item.isdecimal():
            raise UserError(
                f"--gpus {option!r}: {item!r} is not a GPU index; "
                f"use 'all', 'none' or a comma list of indices ({_describe(available)})"
            )
        index = int(item)
        if index not in available:
            raise UserError(
                f"--gpus {option!r}: GPU {index} does not exist on this host "
                f"({_describe(available)})"
            )
        if index in chosen:
            raise UserError(f"--gpus {option!r}: GPU {index} is listed twice")
        chosen.append(index)
    return chosen


def _describe(available: list[int]) -> str:
    if not available:
        return "no GPUs detected"
    return "available: " + ", ".join(str(index) for index in available)


def slots(indices: list[int], per_job: int) -> list[tuple[int, ...]]:
    """Split the chosen devices into groups of `per_job` (`--per-job`), one job per group.

    With no devices the worker has one CPU slot, `()`. Devices left over after the last full
    group are an error rather than idle: the user asked for them, so silently not using them
    would be a surprise.
    """
    if per_job < 1:
        raise UserError(f"--per-job must be at least 1, got {per_job}")
    if not indices:
        return [()]
    if len(indices) % per_job:
        chosen = ",".join(str(index) for index in indices)
        raise UserError(
            f"--per-job {per_job} does not divide the {len(indices)} GPU(s) chosen by "
            f"--gpus ({chosen}): {len(indices) % per_job} would be left over; "
            f"choose a number of GPUs that is a multiple of {per_job}"
        )
    return [tuple(indices[start : start + per_job]) for start in range(0, len(indices), per_job)]


def cuda_visible_devices(slot: tuple[int, ...], detected: list[Gpu]) -> str:
    """The `CUDA_VISIBLE_DEVICES` value that shows a job exactly the devices of `slot`.

    UUIDs are used when every device's UUID is known: indices depend on `CUDA_DEVICE_ORDER`
    (nvidia-smi orders by PCI bus, CUDA by default "fastest first"), UUIDs do not. An empty
    slot gives `""`, which hides every GPU from a CPU job.
    """
    uuids = {gpu.index: gpu.uuid for gpu in detected}
    if all(uuids.get(index) for index in slot):
        return ",".join(uuids[index] for index in slot)
    return ",".join(str(index) for index in slot)


# --- host-level claims --------------------------------------------------------------------


def default_lock_dir() -> Path:
    """The per-host directory where every worker on this host records its device claims.

    It lives in the system temporary directory, which all users share, and is made
    world-writable (0o777) because workers of *different* users on one host must see each
    other's locks. The sticky bit (0o1777) is left off on purpose: Linux's
    `fs.protected_regular` then refuses to open, with O_CREAT, a lock file another user
    created, so a second user's worker could not claim a device the first ever used.
    """
    path = Path(tempfile.gettempdir()) / "retrain-gpu-locks"
    path.mkdir(mode=0o777, exist_ok=True)
    # mkdir's mode is filtered by the umask; set it explicitly. Only the owner may, and for
    # everyone else the directory is already as its owner made it.
    with suppress(PermissionError):
        if path.stat().st_mode & 0o777 != 0o777:
            path.chmod(0o777)
    return path


class DeviceBusy(UserError):
    """A device is claimed by another worker (or another claim of this one)."""

    def __init__(self, index: int, holder: str, lock_path: Path) -> None:
        self.index = index
        self.holder = holder
        self.lock_path = lock_path
        by = f" by {holder}" if holder else ""
        super().__init__(f"GPU {index} is already claimed{by} (lock {lock_path})")


class DeviceLock:
    """The host-wide lock of one device: `gpu-{index}.lock` plus a `gpu-{index}.owner` note.

    The lock is an OS file lock (flock), so the kernel drops it when the holder dies: a
    crashed worker never leaves a device claimed. The owner note (pid and hostname) exists
    only to tell a refused claimer whom to look for.
    """

    def __init__(self, index: int, lock_dir: Path) -> None:
        self.index = index
        self.lock_path = lock_dir / f"gpu-{index}.lock"
        self.owner_path = lock_dir / f"gpu-{index}.owner"
        # Mode 0o666 (applied by filelock regardless of the umask): another user's worker must
        # be able to open the same lock file to contend for the device. Not thread-local: a
        # worker may claim in one thread and release in another (a job watcher, say).
        self._lock = FileLock(self.lock_path, mode=0o666, thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self, *, wait: bool = False) -> None:
        """Take the device; raise `DeviceBusy` at once if it is held, unless `wait`."""
        try:
            self._lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            raise DeviceBusy(self.index, self.holder(), self.lock_path) from None
        try:
            self._write_owner()
        except BaseException:
            self._lock.release()
            raise

    def release(self) -> None:
        """Give the device back; a no-op when not held."""
        if not self._lock.is_locked:
            return
        # Remove the note while still holding the lock: after release, the next holder may
        # already have written its own note, which we must not delete.
        with suppress(FileNotFoundError):
            self.owner_path.unlink()
        self._lock.release()

    def holder(self) -> str:
        """Who holds the device, as recorded in the owner note ("" when unknown)."""
        try:
            text = self.owner_path.read_text(encoding="utf-8")
        except OSError:
            return ""
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        pid, host = fields.get("pid", ""), fields.get("host", "")
        if not pid:
            return ""
        return f"pid {pid} on {host}" if host else f"pid {pid}"

    def _write_owner(self) -> None:
        # Write a private temporary file, then rename: a reader never sees half a note, and
        # the rename replaces a note another user left (their file, our writable directory).
        text = f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
        temporary = self.owner_path.with_name(f"{self.owner_path.name}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        with suppress(OSError):
            temporary.chmod(0o644)
        os.replace(temporary, self.owner_path)


class Claim:
    """The devices of one slot, held together; release them with `release()` or `with`."""

    def __init__(self, indices: tuple[int, ...], locks: list[DeviceLock]) -> None:
        self._indices = indices
        self._locks = locks

    @property
    def indices(self) -> tuple[int, ...]:
        """The slot as claimed, in its own order."""
        return self._indices

    def release(self) -> None:
        """Give every device back; safe to call more than once."""
        for lock in reversed(self._locks):
            lock.release()

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def claim(indices: tuple[int, ...], lock_dir: Path | None = None, *, wait: bool = False) -> Claim:
    """Claim every device of a slot host-wide, or none of them.

    Without `wait`, a device held elsewhere raises `DeviceBusy` naming it and its holder, and
    the devices already taken are given back. With `wait`, block until all are free. Devices
    are taken in ascending order so that two waiting claimers cannot deadlock on each other.
    An empty slot (a CPU worker) claims nothing.
    """
    directory = default_lock_dir() if lock_dir is None else lock_dir
    locks = [DeviceLock(index, directory) for index in sorted(set(indices))]
    taken: list[DeviceLock] = []
    try:
        for lock in locks:
            lock.acquire(wait=wait)
            taken.append(lock)
    except BaseException:
        for lock in reversed(taken):
            lock.release()
        raise
    return Claim(tuple(indices), locks)


def require_free(option: str, indices: list[int], lock_dir: Path | None = None) -> None:
    """Refuse to start unless every device `--gpus` chose is free of other workers' claims.

    A worker never starts on part of what it was given: with `--gpus all` on a host where
    another worker holds some devices, running on the rest would hide the clash and change
    what `all` means from one start to the next. So any claimed device is a `UserError` that
    names each one and its holder, and the free ones to pass instead. Each device is only
    tried, then let go: the slots claim (and keep) their devices themselves.
    """
    directory = default_lock_dir() if lock_dir is None else lock_dir
    busy: list[DeviceBusy] = []
    for index in indices:
        try:
            claim((index,), directory).release()
        except DeviceBusy as exc:
            busy.append(exc)
    if not busy:
        return
    free = [index for index in indices if index not in {b.index for b in busy}]
    held = "; ".join(str(b) for b in busy)
    listed = ", ".join(map(str, free))
    hint = (
        f"free: {listed} (pass --gpus {listed.replace(' ', '')} to use only those)"
        if free
        else "no chosen GPU is free"
    )
    raise UserError(f"--gpus {option!r}: {held}; {hint}")
