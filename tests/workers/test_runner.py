"""Running a training command: streamed output, exit status, abort/timeout of a whole process tree.

Every test runs real subprocesses (`sys.executable -c ...`). Waits are bounded, but nothing
asserts on wall-clock durations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.runner import OUTPUT, RunResult, kill_group, run_process

# Generous bounds for slow CI machines; they only limit how long a broken test hangs.
WAIT_S = 30.0


def py(code: str, *args: str) -> list[str]:
    """argv running `code` in a fresh interpreter, with `args` as sys.argv[1:]."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    """Whether `pid` no longer runs. A zombie counts as gone: it is dead, and only waits for
    a parent to reap it, which in a container whose PID 1 does not reap orphans never happens."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Background:
    """run_process on a thread, so that a test can set `abort` while it runs."""

    def __init__(self, argv: list[str], tmp_path: Path, **kwargs: object) -> None:
        self.abort = threading.Event()
        self.result: RunResult | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = run_process(
                    argv,
                    env=base_env(),
                    cwd=tmp_path,
                    abort=self.abort,
                    **kwargs,  # type: ignore[arg-type]
                )
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self) -> RunResult:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "run_process did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def test_completed_streams_lines_in_order_and_keeps_tail(tmp_path: Path) -> None:
    script = py(
        """
        import sys
        for i in range(20):
            print(f"out{i}", flush=True)
            print(f"err{i}", file=sys.stderr, flush=True)
        sys.stdout.buffer.write(b"bad\\xff\\r\\nlast-no-newline")
        """
    )
    calls: list[tuple[str, str]] = []
    result = run_process(
        script,
        env=base_env(),
        cwd=tmp_path,
        timeout_s=WAIT_S,
        on_line=lambda stream, line: calls.append((stream, line)),
        tail_lines=5,
    )

    assert result.status == "completed"
    assert result.exit_code == 0
    assert result.duration_s >= 0
    assert {stream for stream, _ in calls} == {OUTPUT}
    assert [line for _, line in calls] == [
        line for i in range(20) for line in (f"out{i}", f"err{i}")
    ] + ["bad\ufffd", "last-no-newline"]
    # The tail is the last lines in the very order on_line saw them.
    assert result.tail == [line for _, line in calls][-5:]


def test_stdout_and_stderr_lines_arrive_in_the_order_they_were_written(tmp_path: Path) -> None:
    """A stderr line written after a flushed stdout line comes after it (a traceback after the
    output that led to it), however fast the two alternate."""
    script = py(
        """
        import sys
        for i in range(300):
            print(f"out{i}", flush=True)
            print(f"err{i}", file=sys.stderr, flush=True)
        """
    )
    lines: list[str] = []
    result = run_process(
        script,
        env=base_env(),
        cwd=tmp_path,
        timeout_s=WAIT_S,
        on_line=lambda _stream, line: lines.append(line),
    )
    assert result.status == "completed"
    assert lines == [line for i in range(300) for line in (f"out{i}", f"err{i}")]


def test_tail_is_the_last_n_lines(tmp_path: Path) -> None:
    script = py("for i in range(100): print(i)")
    result = run_process(script, env=base_env(), cwd=tmp_path, timeout_s=WAIT_S, tail_lines=3)
    assert result.tail == ["97", "98", "99"]


def test_nonzero_exit_is_failed_with_that_code(tmp_path: Path) -> None:
    script = py("import sys; print('boom', file=sys.stderr); sys.exit(3)")
    result = run_process(script, env=base_env(), cwd=tmp_path, timeout_s=WAIT_S)
    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.tail == ["boom"]


def test_on_line_errors_do_not_stop_the_run(tmp_path: Path) -> None:
    def broken(stream: str, line: str) -> None:
        raise RuntimeError("log shipper down")

    script = py("for i in range(5): print(i)")
    result = run_process(script, env=base_env(), cwd=tmp_path, timeout_s=WAIT_S, on_line=broken)
    assert result.status == "completed"
    assert result.tail == ["0", "1", "2", "3", "4"]


GRANDCHILD = """
import os, signal, sys, time
{ignore}
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""

CHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(600)
"""

LEADER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
print("leader up", flush=True)
time.sleep(600)
"""


def tree(pid_file: Path, *, grandchild_ignores_term: bool) -> list[str]:
    """A leader that starts a child that starts a grandchild; the grandchild writes its pid."""
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if grandchild_ignores_term else ""
    return py(LEADER, textwrap.dedent(CHILD), GRANDCHILD.format(ignore=ignore), str(pid_file))


@pytest.mark.parametrize("grandchild_ignores_term", [False, True])
def test_abort_kills_the_whole_tree(tmp_path: Path, grandchild_ignores_term: bool) -> None:
    pid_file = tmp_path / "grandchild.pid"
    run = Background(
        tree(pid_file, grandchild_ignores_term=grandchild_ignores_term),
        tmp_path,
        timeout_s=600,
        grace_s=5.0,
    )
    wait_for(pid_file.exists, "the grandchild to start")
    grandchild = int(pid_file.read_text())
    assert not process_gone(grandchild)

    run.abort.set()
    result = run.join()

    assert result.status == "aborted"
    assert result.exit_code is None  # the leader died of our SIGTERM
    assert "leader up" in result.tail
    wait_for(lambda: process_gone(grandchild), "the grandchild to be gone")


def test_process_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    script = py(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    ready = threading.Event()
    run = Background(
        script,
        tmp_path,
        timeout_s=600,
        grace_s=0.5,
        on_line=lambda stream, line: ready.set() if line == "ready" else None,
    )
    assert ready.wait(WAIT_S), "the script did not start"
    run.abort.set()
    result = run.join()
    assert result.status == "aborted"
    assert result.exit_code is None


def test_exit_during_grace_reports_its_code(tmp_path: Path) -> None:
    script = py(
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    ready = threading.Event()
    run = Background(
        script,
        tmp_path,
        timeout_s=600,
        grace_s=WAIT_S,
        on_line=lambda stream, line: ready.set() if line == "ready" else None,
    )
    assert ready.wait(WAIT_S), "the script did not start"
    run.abort.set()
    result = run.join()
    assert result.status == "aborted"
    assert result.exit_code == 7


def test_timeout(tmp_path: Path) -> None:
    script = py("import time; time.sleep(600)")
    result = run_process(script, env=base_env(), cwd=tmp_path, timeout_s=0.5, grace_s=5.0)
    assert result.status == "timeout"
    assert result.exit_code is None


def test_abort_set_before_start_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    abort = threading.Event()
    abort.set()
    script = py(f"open({str(marker)!r}, 'w').close()")
    result = run_process(script, env=base_env(), cwd=tmp_path, timeout_s=WAIT_S, abort=abort)
    assert result.status == "aborted"
    assert result.exit_code is None
    assert not marker.exists()


def test_stragglers_are_killed_when_the_leader_exits(tmp_path: Path) -> None:
    """A leader that exits 0 but leaves a grandchild behind (holding our stdout open): the run
    still returns, completed, and the grandchild is gone."""
    pid_file = tmp_path / "grandchild.pid"
    script = py(
        """
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
        deadline = time.monotonic() + 30
        while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
            time.sleep(0.02)
        """,
        GRANDCHILD.format(ignore="signal.signal(signal.SIGTERM, signal.SIG_IGN)"),
        str(pid_file),
    )
    result = run_process(script, env=base_env(), cwd=tmp_path, timeout_s=WAIT_S)
    assert result.status == "completed"
    assert result.exit_code == 0
    grandchild = int(pid_file.read_text())
    wait_for(lambda: process_gone(grandchild), "the grandchild to be gone")


def test_env_cwd_and_arguments_arrive_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAIN_PARENT_ONLY", "1")
    workdir = tmp_path / "work"
    workdir.mkdir()
    victim = workdir / "x"
    victim.write_text("still here")
    script = py(
        """
        import os, sys
        print(os.getcwd())
        print(os.environ.get("RETRAIN_PROBE"))
        print("RETRAIN_PARENT_ONLY" in os.environ)
        print(sys.argv[1])
        """,
        "$HOME;rm -rf x",
    )
    result = run_process(
        script,
        env={**base_env(), "RETRAIN_PROBE": "42"},
        cwd=workdir,
        timeout_s=WAIT_S,
    )
    assert result.status == "completed"
    assert result.tail == [str(workdir.resolve()), "42", "False", "$HOME;rm -rf x"]
    assert victim.read_text() == "still here"


def test_kill_group_stops_a_group_and_tolerates_a_gone_one() -> None:
    proc = subprocess.Popen(py("import time; time.sleep(600)"), start_new_session=True)
    try:
        kill_group(proc.pid, grace_s=5.0)
        # kill_group does not reap: the owner of the Popen still gets the status.
        assert proc.wait(WAIT_S) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kill_group(proc.pid, grace_s=0.1)  # the group is gone now: no error


def test_command_not_found_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run_process(
            [str(tmp_path / "no-such-command")], env=base_env(), cwd=tmp_path, timeout_s=WAIT_S
        )


ESCAPER = """
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()  # out of the job's session and process group
    if os.fork():
        os._exit(0)  # double fork: the daemon is orphaned at once
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
    os._exit(0)
os.waitpid(pid, 0)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
print("escaped", flush=True)
if sys.argv[2] == "stay":
    time.sleep(600)
"""

ROOT = Path(__file__).parents[2]

# Run in a process of its own that is a subreaper, as the work horse is (pytest's own
# process must not become one: every orphan of the session would be reparented to it).
HARNESS = """
import ctypes, json, os, sys, threading, time
from pathlib import Path
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
from workers.runner import run_process
import subprocess
pid_file, mode, escaper = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
abort = threading.Event()
# The caller's own children, from before the job and started while it runs: never touched.
helpers = [subprocess.Popen(["sleep", "600"])]
def watch():
    while not pid_file.exists():
        time.sleep(0.02)
    helpers.append(subprocess.Popen(["sleep", "600"]))
    if mode == "stay":
        abort.set()
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
lines = []
result = run_process([sys.executable, "-c", escaper, str(pid_file), mode],
                     env={"PATH": os.environ["PATH"]}, cwd=pid_file.parent, timeout_s=120,
                     abort=abort, grace_s=5.0, on_line=lambda _s, line: lines.append(line))
daemon = int(pid_file.read_text())
try:
    os.kill(daemon, 0)  # this process is its reaper: once reaped it is gone, no zombie
    alive = True
    os.kill(daemon, 9)
except ProcessLookupError:
    alive = False
watcher.join()
spared = all(helper.poll() is None for helper in helpers)
for helper in helpers:
    helper.kill()
    helper.wait()
said = any("killed 1 process the job left running" in line for line in lines)
print(json.dumps({"status": result.status, "alive": alive, "helpers spared": spared,
                  "said": said}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER")
@pytest.mark.parametrize("mode", ["exit", "stay"])
def test_a_process_that_left_the_group_dies_with_the_run(tmp_path: Path, mode: str) -> None:
    """Found by the attacker pass on issue 10 (F2): a grandchild that called setsid() outlived
    its job and swapped the job's outputs for links while the worker uploaded them. Whether
    the leader exits by itself ("exit") or is aborted ("stay"), nothing of the job is left."""
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(tmp_path / "daemon.pid"), mode, ESCAPER],
        capture_output=True, text=True, timeout=120, check=False,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    status = "completed" if mode == "exit" else "aborted"
    # New-user pass: the kill went unsaid; the run's log (output.log) says it now.
    assert result == {"status": status, "alive": False, "helpers spared": True, "said": True}
