"""`retrain up`: the whole system on one machine, for trying it out and for small teams.

Redis (the embedded server when RETRAIN_REDIS_URL is unset), the store (SQLite by default)
and local blob storage, one scheduler and N local workers, each a child process of its own
session, so a Ctrl-C in the terminal reaches `up` alone and `up` stops them in order:

1. first Ctrl-C (or SIGTERM): workers finish their running jobs and take no new ones;
2. a second one: workers stop their jobs gracefully and hand the tasks back to the queue;
3. then the scheduler (after the workers, so it applies their last reports), then the
   embedded Redis if this `up` started it.

However `up` ends, its children end too, SIGKILL included: each holds a lifeline to it
(`orchestrator.lifeline`) and stops itself as a first Ctrl-C would when `up` is gone; a guard
process (`orchestrator.reaper`) kills what is left after a bound and stops the embedded Redis.

One `up` per RETRAIN_HOME (a file lock); its state, children included, is in
`RETRAIN_HOME/up.json`, through which the next `up` finds and stops whatever a dead one left
running. Every other `retrain` command with the same home finds the embedded Redis by itself
(`RETRAIN_HOME/redis.json`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from orchestrator import lifeline, reaper
from orchestrator.errors import RetrainError, UserError
from orchestrator.processes import alive, started_at
from orchestrator.redact import redact_url
from orchestrator.settings import Settings, ensure_worker_secret

STATE_FILE = reaper.STATE_FILE
STOP_SCHEDULER_S = lifeline.SCHEDULER_STOP_S


class AlreadyUp(RetrainError):
    """Another `retrain up` runs with this RETRAIN_HOME."""

    exit_code = 1


@dataclass
class Child:
    role: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    terms: int = 0  # SIGTERMs sent (a worker's first: finish the job; second: hand it back)
    last_term: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


@dataclass
class Up:
    settings: Settings
    triggers: Path
    queues: list[str]
    workers: int = 1
    gpus: str = "all"
    per_job: int = 1
    metrics_port: int | None = None
    poll_interval: float = 1.0
    children: list[Child] = field(default_factory=list)
    stops: int = 0
    started_redis: bool = False
    redis_pid: int = 0
    guard: subprocess.Popen[bytes] | None = None
    line: int = -1  # the lifeline's write end, held by this process alone

    def run(self) -> int:
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(home / "up.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise AlreadyUp(_already(home)) from None
        try:
            # The lock is ours, so the `up` of a leftover up.json is dead: stop what it left.
            reaper.stop_orphans(home, _say)
            if self.settings.worker_secret is None:
                # Payloads and reports are signed: the scheduler, the workers and every CLI of
                # this home read the secret from the home (jobs never see it).
                self.settings.worker_secret = ensure_worker_secret(home)
            return self._run()
        finally:
            (home / STATE_FILE).unlink(missing_ok=True)
            lock.release()

    def _run(self) -> int:
        read, self.line = lifeline.make()
        try:
            return self._run_lined(read)
        finally:
            os.close(read)
            self._dismiss_guard()
            os.close(self.line)

    def _run_lined(self, read: int) -> int:
        # The guard first: from now on, however this process dies, what it started is
        # stopped (the guard reads up.json, rewritten after each start).
        self._start_guard(read)
        # Arguments first: a mistake (too few GPUs for --workers) must start nothing at all.
        worker_argvs = self._worker_argvs()
        # From here on whatever was started (the embedded Redis first) is stopped again on
        # the way out, also when a later step fails or Ctrl-C comes while starting.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            redis_url = self._redis()
            self._write_state(redis_url)
            self._store()
            self._check_templates()
            self.children = [Child("scheduler", self._scheduler_argv())]
            self.children += [Child("worker", argv) for argv in worker_argvs]
            for child in self.children:
                if self.stops:
                    break  # Ctrl-C while starting: start no more
                child.proc = subprocess.Popen(
                    _held(child.role, child.argv),
                    start_new_session=True,
                    pass_fds=(read,),
                    env=lifeline.child_env(read),
                )
                self._write_state(redis_url)
            if self.stops:
                return 0
            self._banner(redis_url)
            return self._watch(read, redis_url)
        finally:
            self._shutdown()

    # -- starting --------------------------------------------------------------------------

    def _redis(self) -> str:
        from orchestrator.queue.connection import connect, embedded_url

        if self.settings.redis_url:
            connect(self.settings).close()  # a clear error now if it does not answer
            return self.settings.redis_url
        running = embedded_url(self.settings, start=False)
        url = running or embedded_url(self.settings, start=True)
        self.started_redis = running is None
        if self.started_redis:
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = json.loads((self.settings.home / "redis.json").read_text())
                self.redis_pid = int(state["pid"])
        assert url is not None
        return url

    def _store(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from orchestrator.store import Store

        # Opening it creates or migrates the database: once, here, before the children.
        try:
            Store(self.settings.database_url).dispose()
        except (OSError, SQLAlchemyError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"RETRAIN_DATABASE_URL: cannot open {redact_url(self.settings.database_url)}: "
                f"{reason}"
            ) from None

    def _check_templates(self) -> None:
        """Say now which triggers name a template the store lacks, or one that refuses their
        overrides: every firing of theirs would be skipped. A warning, not a refusal: the
        template may be registered once everything is up."""
        from orchestrator.runtime import Runtime
        from orchestrator.triggers.config import load_config
        from orchestrator.triggers.templates import store_runs, store_templates
        from orchestrator.yamlfile import FileError

        runtime = Runtime(self.settings)
        try:
            load_config(
                self.triggers,
                templates=store_templates(runtime.tasks),
                runs=store_runs(runtime.tasks),
            )
        except FileError as exc:
            for problem in exc.problems:
                sys.stderr.write(f"retrain up: warning: {problem}\n")
        finally:
            runtime.close()

    def _scheduler_argv(self) -> list[str]:
        argv = [*_retrain(), "scheduler", "--triggers", str(self.triggers)]
        argv += ["--poll-interval", str(self.poll_interval)]
        if self.metrics_port:
            argv += ["--metrics-port", str(self.metrics_port)]
        return argv

    def _worker_argvs(self) -> list[list[str]]:
        from workers.gpus import detect, parse_gpus

        chosen = parse_gpus(self.gpus, detect())
        if chosen and len(chosen) < self.workers * self.per_job:
            raise UserError(
                f"--workers {self.workers}: {len(chosen)} GPU(s) chosen, fewer than "
                f"{self.workers} worker(s) x --per-job {self.per_job}; use --gpus none for CPU"
            )
        host = socket.gethostname()
        argvs = []
        for i in range(self.workers):
            mine = chosen[i :: self.workers] if chosen else []
            devices = ",".join(map(str, mine)) if mine else "none"
            argv = [*_retrain(), "worker", "--gpus", devices, "--per-job", str(self.per_job)]
            argv += ["--name", f"{host}-up{i + 1}"]
            for queue in self.queues:
                argv += ["--queue", queue]
            argvs.append(argv)
        return argvs

    def _write_state(self, redis_url: str) -> None:
        """up.json: what runs for this `up`, with start times (see `orchestrator.reaper`)."""
        redis_process = None
        if self.redis_pid:
            redis_process = _recorded("redis", self.redis_pid)
        state = {
            "pid": os.getpid(),
            "redis": redact_url(redis_url),
            "embedded_redis": not self.settings.redis_url,
            "children": [_recorded(c.role, c.pid) for c in self.children if c.pid],
            "guard": _recorded("guard", self.guard.pid) if self.guard else None,
            "redis_process": redis_process,  # only when this `up` started it
        }
        path = self.settings.home / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2))
        path.with_suffix(".tmp").replace(path)

    def _banner(self, redis_url: str) -> None:
        s = self.settings
        workers = [c for c in self.children if c.role == "worker"]
        redis = redact_url(redis_url)
        redis = redis if s.redis_url else f"embedded, {redis} (RETRAIN_HOME)"
        lines = [
            f"retrain is up (RETRAIN_HOME={s.home})",
            f"  store      {redact_url(s.database_url)}",
            f"  redis      {redis}",
            f"  storage    {redact_url(s.storage_url)}",
            f"  triggers   {self.triggers}",
            f"  scheduler  pid {self.children[0].pid}",
            f"  workers    {len(workers)} on queue(s) {', '.join(self.queues)} "
            f"(pids {', '.join(str(c.pid) for c in workers)})",
            "Watch it from another terminal with the same RETRAIN_HOME: retrain status --watch",
            "Ctrl-C stops it (running jobs finish first; Ctrl-C twice hands them back).",
        ]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    # -- running ---------------------------------------------------------------------------

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stops += 1
        workers = [c for c in self.children if c.role == "worker"]
        if self.stops == 1:
            sys.stderr.write(
                "retrain up: stopping; running jobs finish first "
                "(Ctrl-C again to hand them back to the queue)\n"
            )
        elif self.stops == 2:
            sys.stderr.write(
                "retrain up: stopping running jobs; their tasks go back to the queue\n"
            )
        if self.stops <= 2:
            for child in workers:
                _term(child)

    def _start_guard(self, read: int) -> None:
        self.guard = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.reaper", str(self.settings.home),
             str(os.getpid())],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            pass_fds=(read,),
            env=lifeline.child_env(read),
        )

    def _watch(self, read: int, redis_url: str) -> int:
        """Until stopped, or until a child or the embedded Redis this `up` started dies by
        itself (then everything stops, code 1). A guard that died is replaced: without one,
        a later death of `up` would leave that Redis running."""
        while self.stops == 0:
            if self.guard is not None and self.guard.poll() is not None:
                _say(f"retrain up: its guard (pid {self.guard.pid}) exited; starting a new one")
                self._start_guard(read)
                self._write_state(redis_url)
            if self.started_redis and self.redis_pid and not alive(self.redis_pid):
                _say(
                    f"retrain up: the embedded Redis (pid {self.redis_pid}) exited; stopping "
                    "everything (its data is kept; the next retrain up starts it again)"
                )
                return 1
            for child in self.children:
                assert child.proc is not None
                code = child.proc.poll()
                if code is not None:
                    sys.stderr.write(
                        f"retrain up: the {child.role} (pid {child.pid}) exited with code "
                        f"{code}; stopping everything\n"
                    )
                    return 1
            time.sleep(0.2)
        return 0

    def _shutdown(self) -> None:
        workers = [c for c in self.children if c.role == "worker" and c.proc is not None]
        # A child died (no Ctrl-C): stop the rest as a first Ctrl-C would. And a worker started
        # just as a Ctrl-C came gets the SIGTERMs the others got.
        wanted = min(self.stops, 2) or 1
        for child in workers:
            while child.terms < wanted and _term(child):
                pass
        for child in workers:
            assert child.proc is not None
            while child.proc.poll() is None:
                try:
                    child.proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    if self.stops >= 3:  # a third Ctrl-C: no more waiting
                        _signal(child, signal.SIGKILL)
        for child in self.children:
            if child.role == "scheduler" and child.proc is not None:
                _signal(child, signal.SIGTERM)
                try:
                    child.proc.wait(STOP_SCHEDULER_S)
                except subprocess.TimeoutExpired:
                    _signal(child, signal.SIGKILL)
                    child.proc.wait()
        if self.started_redis:
            from orchestrator.queue.connection import stop_embedded

            stop_embedded(self.settings)
        sys.stderr.write("retrain up: stopped\n")

    def _dismiss_guard(self) -> None:
        """This process stopped what it started: tell the guard, which then exits."""
        if self.guard is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.line, reaper.DONE)
        try:
            self.guard.wait(10)
        except subprocess.TimeoutExpired:
            self.guard.kill()
            self.guard.wait()


def queues_of(triggers: Path) -> list[str]:
    """The queues the triggers file sends runs to, plus `default` (templates' own queue)."""
    from orchestrator.triggers.config import load_config

    config = load_config(triggers)
    return sorted({t.run.queue for t in config.triggers if t.run.queue} | {"default"})


def _retrain() -> list[str]:
    script = Path(sys.executable).with_name("retrain")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def _recorded(role: str, pid: int) -> dict[str, object]:
    return {"role": role, "pid": pid, "start": started_at(pid)}


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _term(child: Child) -> bool:
    """One more SIGTERM to a worker (a first: finish the job; a second: hand it back), more
    than RQ's one second after the previous one, which would count as the same request."""
    if child.terms and time.monotonic() - child.last_term < 1.2:
        time.sleep(1.2 - (time.monotonic() - child.last_term))
    if not _signal(child, signal.SIGTERM):
        return False  # not started yet, or gone
    child.terms += 1
    child.last_term = time.monotonic()
    return True


def _held(role: str, argv: list[str]) -> list[str]:
    """`argv` of a child, holding its lifeline before anything is imported: importing the CLI
    takes seconds on a loaded machine, and an `up` that dies meanwhile must take the child
    with it (until the child's own handlers are set, a stage's SIGTERM simply ends it)."""
    stages = {"worker": "WORKER", "scheduler": "SCHEDULER"}[role]
    command = argv[1:] if Path(argv[0]).name == "retrain" else argv[3:]
    return [
        sys.executable,
        "-c",
        f"from orchestrator import lifeline; lifeline.hold(lifeline.{stages}); "
        "from orchestrator.cli import main; main()",
        *command,
    ]


def _signal(child: Child, signum: int) -> bool:
    """`signum` to a started, running child; False if there was none to send it to."""
    if child.proc is not None and child.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signum)
            return True
    return False


def _already(home: Path) -> str:
    pid = "?"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pid = str(json.loads((home / STATE_FILE).read_text())["pid"])
    return (
        f"retrain up is already running for RETRAIN_HOME={home} (pid {pid}); use it, or stop "
        "it with Ctrl-C in its terminal"
    )


def run_up(
    triggers: Path,
    *,
    queues: Sequence[str] = (),
    workers: int = 1,
    gpus: str = "all",
    per_job: int = 1,
    metrics_port: int | None = None,
) -> int:
    settings = Settings.load()
    if not triggers.exists():
        raise UserError(
            f"--triggers: {triggers} does not exist (write one: see triggers.yaml in the "
            "retrain repository)"
        )
    chosen = list(queues) or queues_of(triggers)
    return Up(
        settings,
        triggers.absolute(),
        chosen,
        workers=workers,
        gpus=gpus,
        per_job=per_job,
        metrics_port=metrics_port,
    ).run()
