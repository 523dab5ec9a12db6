"""Run a user's training command the way a GPU agent must: no shell, its own process group,
output streamed line by line, and a stop that leaves nothing behind on the GPU.

A training command rarely stays one process: launchers (torchrun, accelerate) fork one process
per device, data loaders fork workers, and those fork again. Killing only the process we started
would orphan the rest, still holding GPU memory that the next job on this slot then cannot get.
So every run leads a fresh session (and with it a fresh process group, whose id is the leader's
pid); stopping a run signals the whole group, and a group kill also follows every leader exit,
normal or not, to reap stragglers.

stdout and stderr share one pipe. Two pipes carry no order between them: a reader (two
threads, or one selector over both) that finds both ready cannot tell which line was written
first, so a traceback could show before the output that led to it, live and in the stored
log. Writes to one pipe arrive exactly in the order they were made. The price is that a line
no longer says which stream it came from; users read a run's log as one terminal would show it.

POSIX only (process groups, `os.killpg`, `os.waitid`), which is what GPU hosts run.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import structlog

if TYPE_CHECKING:
    from workers.sandbox_exec import Confinement

__all__ = [
    "OUTPUT",
    "RunResult",
    "RunStatus",
    "become_subreaper",
    "children",
    "kill_group",
    "reap_orphans",
    "run_process",
]

log = structlog.get_logger("retrain.worker.runner")

RunStatus = Literal["completed", "failed", "aborted", "timeout"]

OUTPUT = "output"
"""The stream name `on_line` gets: the command's stdout and stderr, merged as written."""

# How often the supervising loop looks at the leader, the abort event and the clock. Exits are
# noticed within this delay; short enough to be invisible next to a training run.
POLL_S = 0.05
# After SIGKILL the leader normally dies at once; a process stuck in uninterruptible sleep (a
# hung NFS mount, a wedged driver call) may not, and must not hang the agent forever.
REAP_TIMEOUT_S = 10.0
# Once the group is dead its pipes reach EOF at once; a process that escaped the group (it
# called setsid itself) may keep them open, and the agent must not wait on it forever.
READER_JOIN_TIMEOUT_S = 5.0
# How often the supervising loop reaps the job's orphans that have exited (a subreaper's
# zombies), so a job that daemonises many short-lived helpers cannot fill the pid table.
ORPHAN_REAP_EVERY_S = 1.0
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
# A line is cut into pieces of at most this many bytes, so that output without newlines (a
# progress bar redrawn with "\r", a binary dump) cannot grow one line without bound in memory.
MAX_LINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    `exit_code` is the leader's exit status; None when it was killed by a signal we sent before
    it exited by itself (abort or timeout). A leader that died of a signal nobody here sent (the
    OOM killer, a segfault) is "failed" with the negative signal number, as `subprocess` reports.
    `tail` holds the last output lines, stdout and stderr in the order they were written.
    """

    status: RunStatus
    exit_code: int | None
    duration_s: float
    tail: list[str]


def kill_group(pid: int, grace_s: float) -> None:
    """Stop the process group led by `pid`: SIGTERM to the group, up to `grace_s` seconds for the
    leader to exit, then SIGKILL to the group.

    The SIGKILL is sent even when the leader exited within the grace period: children that
    ignore SIGTERM (or are still busy handling it) would otherwise outlive the run and keep their
    GPU memory. The group id is `pid` because `run_process` starts every command in a new
    session. A group that no longer exists is not an error.

    This never reaps the leader (it only peeks at its exit with `WNOWAIT`), so it is safe to call
    on the pid of a `subprocess.Popen` that its owner still waits on.
    """
    if not _signal_group(pid, signal.SIGTERM):
        return  # nobody left in the group: nothing to wait for or kill
    deadline = time.monotonic() + grace_s
    while not _leader_exited(pid) and time.monotonic() < deadline:
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    _signal_group(pid, signal.SIGKILL)


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (`PR_SET_CHILD_SUBREAPER`):
    a job's process that leaves the job's session (`setsid`, a double fork) is reparented
    here when its parent dies, instead of to init, so `reap_orphans` can find and kill it.
    Called by the work horse (`workers.agent`); False where it cannot be done (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        lib = ctypes.CDLL(None, use_errno=True)
        return int(lib.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _is_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        flag = ctypes.c_int(0)
        lib = ctypes.CDLL(None, use_errno=True)
        if lib.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0):
            return False
    except (OSError, AttributeError):
        return False
    return flag.value != 0


_Child = tuple[int, int]
"""(pid, start time in clock ticks since boot): a process, even after its pid is reused."""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, session...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def children() -> dict[_Child, int]:
    """This process's children, each with its session id. Read from every thread's
    `children` file, or where the kernel has none, from a scan of /proc."""
    me = os.getpid()
    pids: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children") as handle:
                pids.update(int(pid) for pid in handle.read().split())
    except OSError:
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    found: dict[_Child, int] = {}
    for pid in pids:
        fields = _stat(pid)
        if fields is not None and int(fields[1]) == me:
            found[(pid, int(fields[19]))] = int(fields[3])
    return found


def _is_job_orphan(child: _Child, session: int, spared: set[_Child]) -> bool:
    """A child of this process that a job left behind: not there before the job started, and
    in a session other than ours (a job's processes are in the session the job leads, or one
    they made with setsid; no process can join this one)."""
    return child not in spared and session != os.getsid(0)


def _left(pid: int, group: int | None) -> bool:
    """Whether `pid` was outside process group `group` (setsid, a new group) when asked."""
    try:
        return group is None or os.getpgid(pid) != group
    except OSError:
        return False


def reap_exited(spared: set[_Child]) -> None:
    """Reap the job's orphans that have already exited (zombies reparented to this
    subreaper); running ones are left alone."""
    for child, session in children().items():
        if _is_job_orphan(child, session, spared):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child[0], os.WNOHANG)


def reap_orphans(
    spared: set[_Child],
    timeout_s: float = REAP_TIMEOUT_S,
    killed: list[int] | None = None,
    group: int | None = None,
) -> list[int]:
    """SIGKILL and reap every process the job left behind that was reparented to this
    process (a subreaper: `become_subreaper`), round after round, since each one killed
    hands its own children to us, until none is left or `timeout_s` passes. `spared`: this
    process's children from before the job (`children()`), which are never touched.
    Returns the pids that survived (stuck in the kernel), an empty list when all died;
    `killed` gets the pids it signalled that had left process group `group` (those still in
    it were dying of the group's SIGKILL already, only not yet reaped)."""
    deadline = time.monotonic() + timeout_s
    left: list[int] = []
    while True:
        victims = [c[0] for c, sid in children().items() if _is_job_orphan(c, sid, spared)]
        if not victims:
            return []
        if killed is not None:  # asked before the kill: a reaped pid has no group
            killed.extend(pid for pid in victims if _left(pid, group))
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = []
        for pid in victims:
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break  # reaped (or not ours any more)
                if done:
                    break
                if time.monotonic() > deadline:
                    left.append(pid)
                    break
                time.sleep(0.005)
        if left:
            log.error("job processes survived SIGKILL; leaving them", pids=left)
            return left


def _die_with_parent(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> list[str]:
    """`argv`, run so that the kernel SIGKILLs the command when the work horse that started it
    dies (a `kill -9` of the worker, an OOM kill): a lost run's training must not go on holding
    a GPU that its worker's lock no longer guards. util-linux's `setpriv --pdeathsig` sets that
    and then executes the command (a `preexec_fn` would do it too, but it makes Python fork the
    whole work horse instead of using vfork: about 15 ms more per job start). Without setpriv
    (not Linux) the command runs as it is. A sandboxed job asks for it in its confinement."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return list(argv)
    # What exec would say about the command itself, said here: through setpriv it would be
    # an exit code instead of the OSError callers rely on ("nothing ran").
    command = argv[0]
    if "/" in command:
        found = command if os.path.isabs(command) else str(cwd / command)
        if not os.path.exists(found):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
        if not os.access(found, os.X_OK) or os.path.isdir(found):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), command)
    elif shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float,
    on_line: Callable[[str, str], None] | None = None,
    abort: threading.Event | None = None,
    grace_s: float = 30.0,
    tail_lines: int = 50,
    sandbox: Confinement | None = None,
) -> RunResult:
    """Run `argv` (never through a shell) with exactly `env` in `cwd`, and return how it ended.

    Each output line is passed to `on_line(OUTPUT, line)` as it arrives, `line` without its
    line ending; stdout and stderr are one stream, in the order the command wrote them (see the
    module's docstring); bytes that are not UTF-8 become U+FFFD. Calls come from one reader
    thread, in order, so `on_line` need not be thread-safe; an exception from it is logged and
    ignored, so a broken log shipper cannot stop the run or lose its tail.

    The run is stopped when `abort` is set (status "aborted") or after `timeout_s` seconds
    (status "timeout"), with `kill_group(pid, grace_s)`; if it was already set before the start,
    nothing is started. An `OSError` from starting the command (not found, not executable, `cwd`
    missing) propagates: nothing ran. `sandbox` (`workers.sandbox.confinement`) is applied in
    the command's process before it execs `argv`, and closed once it has started; if it cannot
    be applied the command exits 126 without running.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s}")
    if grace_s < 0:
        raise ValueError(f"grace_s must not be negative, not {grace_s}")
    if tail_lines < 0:
        raise ValueError(f"tail_lines must not be negative, not {tail_lines}")
    if abort is not None and abort.is_set():
        return RunResult(status="aborted", exit_code=None, duration_s=0.0, tail=[])

    output = _Output(on_line, tail_lines)
    # A subreaper (the work horse) kills everything the job leaves behind, in or out of its
    # process group; what was its child before the job is not the job's.
    reaper = _is_subreaper()
    spared = set(children()) if reaper else set()
    started = time.monotonic()
    deadline = started + timeout_s
    # A new session makes the command the leader of a new process group that all its children
    # and grandchildren join, so one killpg reaches every one of them; it also detaches them from
    # the agent's terminal, so a Ctrl-C meant for the agent is not delivered to the job as well.
    try:
        proc = subprocess.Popen(
            # A confinement asks for the parent-death signal itself (and forks: a step
            # between fork and exec cannot vfork); otherwise setpriv does (and it vforks).
            list(argv) if sandbox is not None else _die_with_parent(argv, env, cwd),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=sandbox,  # takes no lock (sandbox_exec.Confinement)
        )
    finally:
        if sandbox is not None:
            sandbox.close()
    assert proc.stdout is not None
    readers = [_start_reader(proc.stdout, OUTPUT, output)]
    log.info("process started", pid=proc.pid, argv=list(argv), cwd=str(cwd))

    stopped_by: Literal["aborted", "timeout"] | None = None
    try:
        next_reap = started + ORPHAN_REAP_EVERY_S
        while not _leader_exited(proc.pid):
            if abort is not None and abort.is_set():
                stopped_by = "aborted"
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stopped_by = "timeout"
                break
            if reaper and time.monotonic() >= next_reap:
                reap_exited(spared)
                next_reap = time.monotonic() + ORPHAN_REAP_EVERY_S
            step = min(POLL_S, remaining)
            if abort is not None:
                abort.wait(step)  # wakes at once when abort is set
            else:
                time.sleep(step)
    except BaseException:
        # Interrupted here (RQ's job timeout raises in this thread, a Ctrl-C): the job must
        # not outlive the call that started it.
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=REAP_TIMEOUT_S)
        if reaper:
            reap_orphans(spared)
        raise

    if stopped_by is not None:
        log.info("stopping process group", pid=proc.pid, reason=stopped_by, grace_s=grace_s)
        kill_group(proc.pid, grace_s)
    else:
        # The leader exited by itself but is not reaped yet, so its pid still names the group and
        # cannot be reused: kill whatever it left behind (data loader workers, a daemonised
        # helper) that would hold GPU memory and keep our pipes open.
        _signal_group(proc.pid, signal.SIGKILL)

    try:
        returncode: int | None = proc.wait(timeout=REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.error("process survived SIGKILL; leaving it", pid=proc.pid)
        returncode = None
    killed: list[int] = []
    if reaper:
        # What left the group (setsid, a double fork) was reparented here when its parent
        # died: it dies too, before anyone reads the job's outputs, and the run's log says so.
        reap_orphans(spared, killed=killed, group=proc.pid)
    for reader in readers:
        reader.join(READER_JOIN_TIMEOUT_S)
        if reader.is_alive():
            # Something outside the group holds the pipe open; the daemon thread ends with it.
            log.warning("output still open after the run ended", pid=proc.pid, stream=reader.name)
    if killed and on_line is not None:  # after the readers: `on_line` is called in order
        count = f"{len(killed)} process" + ("es" if len(killed) > 1 else "")
        with contextlib.suppress(Exception):
            on_line(
                "retrain",
                f"killed {count} the job left running after it ended "
                f"(pids {', '.join(map(str, killed[:20]))})",
            )
    duration_s = time.monotonic() - started

    status: RunStatus
    if stopped_by is not None:
        status = stopped_by
        # A negative code is death by signal, and after we signalled the group that is ours.
        exit_code = returncode if returncode is not None and returncode >= 0 else None
    else:
        exit_code = returncode
        status = "completed" if returncode == 0 else "failed"
    log.info("process ended", pid=proc.pid, status=status, exit_code=exit_code)
    return RunResult(status=status, exit_code=exit_code, duration_s=duration_s, tail=output.tail())


# --- helpers --------------------------------------------------------------------------------


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _leader_exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it.

    For our own child, `waitid(WNOWAIT)` sees the exit while leaving the zombie in place: its pid
    (and with it the group id) stays reserved until `Popen.wait` reaps it, so a following killpg
    cannot hit an unrelated group that reused the number, and `Popen` still gets the exit status.
    For any other process, signal 0 tells whether it still exists.
    """
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        pass  # not our child, or already reaped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


class _Output:
    """The merged output of one run: the tail, and the serialised calls to `on_line`."""

    def __init__(self, on_line: Callable[[str, str], None] | None, tail_lines: int) -> None:
        self._on_line = on_line
        self._tail: deque[str] = deque(maxlen=tail_lines)
        # One lock for both, so the order of on_line calls is exactly the order of the tail.
        self._lock = threading.Lock()
        self._callback_failed = False

    def add(self, stream: str, line: str) -> None:
        with self._lock:
            self._tail.append(line)
            if self._on_line is None:
                return
            try:
                self._on_line(stream, line)
            except Exception:
                # Logged once: a callback that fails on every line would flood the agent's log.
                if not self._callback_failed:
                    self._callback_failed = True
                    log.exception("on_line failed; further failures are not logged")

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)


def _start_reader(stream: IO[bytes], name: str, output: _Output) -> threading.Thread:
    # Daemon: a pipe held open by a process that escaped the group must not block the agent's
    # exit; run_process joins with a bound instead.
    thread = threading.Thread(
        target=_read_lines, args=(stream, name, output), name=name, daemon=True
    )
    thread.start()
    return thread


def _read_lines(stream: IO[bytes], name: str, output: _Output) -> None:
    # Incremental, so that a multi-byte character cut by the MAX_LINE_BYTES limit is decoded
    # whole from the next piece rather than turned into two replacement characters.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while chunk := stream.readline(MAX_LINE_BYTES):
            text = decoder.decode(chunk)
            if text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
            output.add(name, text)
        rest = decoder.decode(b"", final=True)  # an incomplete character at the very end
        if rest:
            output.add(name, rest)
    except (OSError, ValueError) as exc:
        log.warning("reading output failed", stream=name, error=str(exc))
    finally:
        stream.close()
