"""The lifeline: children of `retrain up` end when `up` ends, however it ends.

`up` makes a pipe and keeps its only write end; every child gets the read end, its number in
`RETRAIN_LIFELINE`. Nothing is ever written on it for the children. When `up` exits for any
reason (Ctrl-C, a crash, SIGKILL, the OOM killer) the kernel closes the write end, and a read
on the child's end returns EOF: the parent is gone. This works on every POSIX system. On Linux
the child also asks the kernel for a parent-death signal (prctl PR_SET_PDEATHSIG), which
arrives even if the watching thread cannot run.

Either notice runs the child's *stages* once: signals the child sends itself, each after a
delay from the notice, the same ones `up` would have sent. A worker's stages are a first
SIGTERM (finish the running job, take no new one, like a first Ctrl-C) and, if the job
outlives `ORPHAN_JOB_S`, a second (hand the job back to its queue). The scheduler's are SIGTERM
and, if it has not stopped `up`'s patience later, SIGKILL.

The embedded redis-server daemonizes itself, so it can hold no lifeline; `up`'s guard (see
`orchestrator.reaper`) stops it once the children are gone, so they can report until the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

ENV = "RETRAIN_LIFELINE"
NOTICE = signal.SIGUSR2
"""The parent-death signal: one that neither RQ nor the scheduler uses, so that its handler
can run the stages once instead of counting as a second Ctrl-C."""

ORPHAN_JOB_S = 120.0
"""How long a worker whose `up` vanished lets its running job go on before handing it back."""

SCHEDULER_STOP_S = 15.0
"""How long the scheduler may take to stop before it is killed (as `up` itself waits)."""

AGAIN_S = 10.0
"""How often a child that says it is idle (`when_idle`) and outlived a stage gets that stage's
signal again, until the next stage is due."""

_PR_SET_PDEATHSIG = 1

_idle: Callable[[], bool] | None = None

Stages = Sequence[tuple[float, int]]

WORKER: Stages = ((0.0, signal.SIGTERM), (ORPHAN_JOB_S, signal.SIGTERM))
SCHEDULER: Stages = ((0.0, signal.SIGTERM), (SCHEDULER_STOP_S, signal.SIGKILL))


def make() -> tuple[int, int]:
    """(read end, write end) for `up`: pass the read end to children (`child_env`), keep the
    write end, which is close-on-exec and so reaches no child."""
    read, write = os.pipe()
    return read, write


def child_env(read: int) -> dict[str, str]:
    """The environment of a child holding the lifeline `read` (give it `pass_fds=(read,)`)."""
    return {**os.environ, ENV: str(read)}


def take() -> int | None:
    """The lifeline this process was given, if any. The variable is removed, so processes it
    starts (a supervisor's slots, jobs) do not hold it; their own parent stops them."""
    value = os.environ.pop(ENV, None)
    if not value:
        return None
    try:
        fd = int(value)
        os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return None  # a stale variable from an outer environment: there is no line
    return fd


def wait_closed(fd: int) -> None:
    """Block until every write end of `fd` is closed: the parent is gone. Data, if any, is
    read and ignored."""
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except InterruptedError:  # pragma: no cover - retried by Python itself
            continue
        except OSError:
            return


def hold(stages: Stages) -> bool:
    """In a child of `up`: run `stages` once when `up` is gone. Returns False (and does
    nothing) when this process was not given a lifeline."""
    fd = take()
    if fd is None:
        return False
    fired = threading.Lock()

    def lost() -> None:
        if not fired.acquire(blocking=False):
            return
        threading.Thread(target=_run, args=(stages,), name="lifeline-stages", daemon=True).start()

    # The handler first, then the request: the default action of NOTICE would kill us.
    signal.signal(NOTICE, lambda _signum, _frame: lost())
    parent_death_signal(NOTICE)

    def watch() -> None:
        _leave_signals_to_the_main_thread()
        wait_closed(fd)
        lost()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
    return True


def when_idle(check: Callable[[], bool]) -> None:
    """Say how this process tells that it is idle (a worker: no job running). A stage's
    signal should end an idle process at once; one that is still there `AGAIN_S` later is
    sent the signal again (a stop that got lost: in `retrain up`'s tests about one SIGKILL of
    `up` in fifteen left an idle worker blocked in its read until the second stage, 120 s).
    A busy process is left to finish until the next stage, as the stages say."""
    global _idle
    _idle = check


def _is_idle() -> bool:
    check = _idle
    if check is None:
        return False
    try:
        return bool(check())
    except Exception:  # a check that fails says nothing: wait for the next stage
        return False


def parent_death_signal(signum: int) -> bool:
    """Ask Linux to send `signum` when our parent exits; False where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        # The C library is already loaded: its symbols are this process's (no ldconfig run).
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _leave_signals_to_the_main_thread() -> None:
    """Block, in the calling (helper) thread, the signals whose Python handlers must run.

    Python runs signal handlers in the main thread only, and a main thread blocked in a
    system call (RQ's BLPOP while a worker is idle: a socket read with no timeout that nothing
    answers) notices a signal only if the kernel delivers it to that very thread. A signal sent
    to the process goes to any thread that does not block it, and when the parent-death signal
    and a stage's SIGTERM arrive together the kernel picks a helper thread now and then: the
    handler then waits until the read returns (75 s for an idle worker). Blocked here, such a
    signal can only be taken by the main thread."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_BLOCK, {NOTICE, signal.SIGTERM, signal.SIGINT})


def _run(stages: Stages) -> None:
    _leave_signals_to_the_main_thread()
    main = threading.main_thread().ident
    start = time.monotonic()
    sent: int | None = None
    for delay, signum in stages:
        due = start + delay
        while (left := due - time.monotonic()) > 0:
            time.sleep(min(left, AGAIN_S) if sent is not None else left)
            if sent is not None and time.monotonic() < due and _is_idle():
                _send(main, sent)  # idle, and still here: the last stop got lost
        _send(main, signum)
        sent = signum


def _send(main: int | None, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        if signum == signal.SIGKILL or main is None:
            os.kill(os.getpid(), signum)
        else:
            # To the main thread itself, so that a system call it is blocked in returns
            # (EINTR) and the handler runs now (see _leave_signals_to_the_main_thread).
            signal.pthread_kill(main, signum)
