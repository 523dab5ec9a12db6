"""`retrain worker`: RQ workers on this host, one per GPU slot.

A slot is a group of `--per-job` GPUs. One slot runs in this process; several are supervised
as child processes, one per slot, each with its own CUDA_VISIBLE_DEVICES, so four GPUs with
`--per-job 1` run four jobs at once. Every slot claims its devices with host-level locks
first, so two workers on one host can never share a GPU. Each slot is a forking RQ worker
(never SimpleWorker: a job runs in its own work horse, and a crash there cannot take the
worker down) reading JSON jobs from the queues in priority order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.queue import keys
from workers.gpus import Gpu, claim, cuda_visible_devices, detect, parse_gpus, require_free, slots
from workers.startup import announce

PRELOAD = (
    "orchestrator.datasets.materialize",
    "orchestrator.queue.reports",
    "orchestrator.settings",
    "orchestrator.storage",
    "orchestrator.templating",
    "workers.checkout",
    "workers.envs",
    "workers.job",
    "workers.runner",
)
"""Modules every job uses, loaded before the first fork (see `run_slot`)."""


def worker_name(name: str | None, slot: tuple[int, ...]) -> str:
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}-gpu{'+'.join(map(str, slot))}" if slot else base


def run(
    queues: Sequence[str],
    *,
    gpus: str = "all",
    per_job: int = 1,
    name: str | None = None,
    burst: bool = False,
    max_jobs: int | None = None,
    abort_on_stop: bool = False,
) -> int:
    """Run until stopped (or, with `burst`, until the queues are empty). Returns an exit code."""
    detected = detect()
    indices = parse_gpus(gpus, detected)
    chosen = slots(indices, per_job)
    # All or nothing, before any slot starts: never silently serve part of what was asked.
    require_free(gpus, indices)
    if len(chosen) == 1:
        return run_slot(
            queues,
            chosen[0],
            name=name,
            burst=burst,
            max_jobs=max_jobs,
            abort_on_stop=abort_on_stop,
            detected=detected,
        )
    return supervise(
        queues, chosen, name=name, burst=burst, max_jobs=max_jobs, abort_on_stop=abort_on_stop
    )


def run_slot(
    queues: Sequence[str],
    slot: tuple[int, ...],
    *,
    name: str | None,
    burst: bool,
    max_jobs: int | None,
    abort_on_stop: bool = False,
    detected: list[Gpu] | None = None,
) -> int:
    """One forking RQ worker holding the claim on `slot`'s GPUs (`detected`: this host's GPUs,
    when the caller has asked nvidia-smi already: each run delays the worker's start)."""
    from orchestrator.queue import rqjobs
    from orchestrator.queue.connection import client
    from orchestrator.settings import Settings

    if detected is None:
        detected = detect()
    # Load what every job needs once, here: each job runs in a work horse forked from this
    # process, so these modules (pydantic settings above all) cost nothing per job. The
    # user's heavy imports (torch, CUDA) never happen in this process.
    for module in PRELOAD:
        importlib.import_module(module)

    # Freeze what is loaded so far out of the garbage collector's reach: otherwise the first
    # collection in each forked work horse walks (and so copies, page by page) the whole
    # inherited heap, about 100 ms before a job can start.
    gc.collect()
    gc.freeze()

    with claim(slot):
        # Inherited by the work horse and from there by the user's process.
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(slot, detected)
        settings = Settings.load()
        from workers import sandbox

        # The sandbox's walk of the filesystem, once, before any work horse is forked.
        sandbox.warm(
            sandbox.hidden_for(settings.home, settings.resolved_cache_dir, settings.storage_url)
        )
        redis = client(settings)
        # What a killed work horse's job leaves behind comes back to this process, which
        # kills it (`Agent.execute_job`); the horse itself reaps its job's (`main_work_horse`).
        from workers.runner import become_subreaper

        become_subreaper()
        # Jobs are routed by the GPUs they need: this slot takes only those that fit it.
        names = [
            rq_name for queue in queues for rq_name in keys.rq_queues_in_order(queue, len(slot))
        ]
        ttl = settings.heartbeat_ttl_s
        worker = agent_class()(
            [rqjobs.queue_class()(n, connection=redis) for n in names],
            connection=redis,
            serializer=rqjobs.serializer(),
            # Only retrain's job function runs; callbacks and webhooks named in Redis never do.
            job_class=rqjobs.job_class(),
            queue_class=rqjobs.queue_class(),
            name=worker_name(name, slot),
            # RQ beats every `worker_ttl - 15` s while idle and every monitoring interval
            # while busy; each beat refreshes the advertisement for `worker_ttl + 15` s.
            worker_ttl=max(16, ttl),
            job_monitoring_interval=max(1, min(30, ttl // 3)),
        )
        worker.advertised = {
            "host": socket.gethostname(),
            "queues": json.dumps(list(queues)),
            "gpus": json.dumps(
                [asdict(gpu) for gpu in detected if gpu.index in slot], separators=(",", ":")
            ),
        }
        worker.advertised["sandbox"] = sandbox_level()
        worker.advertised["reports"] = "signed" if settings.worker_secret else "unsigned"
        worker.abort_on_stop = abort_on_stop
        # Under `retrain up`, a stop its lifeline sends is sent again while no job runs.
        from orchestrator import lifeline

        lifeline.when_idle(lambda: not worker.horse_pid)
        worker.home = settings.home
        worker.worker_secret = settings.worker_secret
        announce(
            worker,
            queues,
            slot,
            detected,
            settings,
            burst=burst,
            max_jobs=max_jobs,
            sandbox=worker.advertised["sandbox"],
        )
        worked = worker.work(
            burst=burst, max_jobs=max_jobs, with_scheduler=False, logging_level="WARNING"
        )
        return 0 if worked or burst else 1


def sandbox_level() -> str:
    """What this worker's jobs run in (`workers.sandbox`), for its advertisement and start
    line: `landlock-abi-N`, `none` (said as a warning: the kernel has no Landlock) or `off`,
    with `, as USER` for `--job-user` (`, as root` for a root worker without it), `, host
    read-only` where a root worker's jobs see the host read-only (`sandbox.host_readonly`)
    and `, builds allowed` for `--allow-builds`."""
    import structlog

    from workers import sandbox

    level = sandbox.level()
    if level == "none":
        structlog.get_logger("retrain.worker").warning(
            "jobs run unconfined: this kernel has no Landlock (use --sandbox required to "
            "refuse to start without it)"
        )
    user = sandbox.job_user()
    shown = f"{level}, as {user.pw_name}" if user is not None else level
    readonly = level != "off" and sandbox.host_readonly()
    if user is None and os.geteuid() == 0 and level != "off":
        shown = f"{level}, as root"
        structlog.get_logger("retrain.worker").warning(
            "jobs run as root (--allow-root): with no capabilities and the host read-only "
            "to them, but reading what only root may read (Landlock hides the worker's "
            "credentials, not every root-only file) and passing the owner checks of root's "
            "sockets; run untrusted jobs with --job-user USER"
            if readonly
            else "jobs run as root (--allow-root): with no capabilities, but owning root's "
            "files, which Landlock does not stop them from chmod-ing (this host cannot be "
            "made read-only to them: no CAP_SYS_ADMIN here), and root's sockets; run "
            "untrusted jobs with --job-user USER"
        )
    if readonly:
        shown = f"{shown}, host read-only"
    return f"{shown}, builds allowed" if sandbox.allow_builds() else shown


_AGENT_CLASS: type[Any] | None = None


def _redis_down(what: str, exc: BaseException) -> None:
    import structlog

    structlog.get_logger("retrain.worker").warning(f"Redis unreachable: {what}", error=str(exc))


def agent_class() -> type[Any]:
    """RQ's forking `Worker`, plus what retrain needs of it (made on first use, so importing
    this module does not import RQ):

    - it advertises itself for `retrain status` (host, GPUs, queues, state, current task) in
      `keys.worker_key(name)`, refreshed on every RQ heartbeat, removed when it stops;
    - a second SIGTERM/SIGINT (or the first, with `--abort-on-stop`) stops the running job
      gracefully (SIGTERM to the user's process group, its grace period, then SIGKILL) and
      puts the task back on its queue, where RQ's cold shutdown would SIGKILL the work horse
      and orphan the user's processes."""
    global _AGENT_CLASS
    if _AGENT_CLASS is not None:
        return _AGENT_CLASS
    import redis
    from rq import Worker

    from orchestrator import health

    redis_down = (redis.ConnectionError, redis.TimeoutError)

    class Agent(Worker):
        advertised: dict[str, str]
        home: Path
        abort_on_stop: bool = False
        worker_secret: str | None = None
        _releasing = False

        def _advert(self, pipe: Any, **fields: str) -> None:
            key = keys.worker_key(self.name)
            now = dt.datetime.now(dt.timezone.utc)
            pipe.hset(key, mapping={**fields, "heartbeat": now.isoformat()})
            pipe.expire(key, self.worker_ttl + 15)
            pipe.zadd(keys.WORKERS, {self.name: now.timestamp()})

        def _health_detail(self) -> dict[str, str]:
            """What `retrain health worker` says besides liveness."""
            advertised = getattr(self, "advertised", {})
            return {k: advertised[k] for k in ("sandbox", "reports") if k in advertised}

        def execute_job(self, job: Any, queue: Any) -> Any:
            """Run one job in a work horse; then kill whatever of it is left here. The slot
            is a subreaper too (`run_slot`): when the horse itself is killed (an OOM kill,
            RQ's kill after the job's timeout), the job's processes that left its group come
            back to the slot instead of to init, and die here."""
            from workers import runner

            spared = set(runner.children())
            self._slot_pid = os.getpid()  # the work horse's parent, checked in the horse
            try:
                return super().execute_job(job, queue)
            except redis_down as exc:
                if self.horse_pid:  # raised while the horse runs: not an ended job's
                    raise
                # The horse is gone, its end unreported: the job gave up its retries (an
                # outage past them), and RQ could not record the job either. RQ's work loop
                # would quit on the error; this worker waits for Redis and goes on (the run
                # is the scheduler's to settle as lost, RQ's record its registry clean-up's).
                _redis_down("the job ended unreported; waiting for Redis", exc)
                self._wait_for_redis()
                return None
            finally:
                runner.reap_orphans(spared)

        def _wait_for_redis(self) -> None:
            """Until Redis answers (again each few seconds, at most 30 s apart), or a stop is
            asked for; then the worker's state is idle again."""
            import time

            pause = 1.0
            while not self._stop_requested:
                try:
                    self.connection.ping()
                    self.set_state("idle")
                    return
                except redis_down:
                    time.sleep(pause)
                    pause = min(pause * 2, 30.0)

        def main_work_horse(self, job: Any, queue: Any) -> None:
            """The work horse: first made the subreaper of whatever its job starts, so that
            a process that leaves the job's process group (setsid, a double fork) comes back
            to it and dies when the job ends (`workers.runner.reap_orphans`)."""
            from orchestrator.lifeline import parent_death_signal
            from workers.runner import become_subreaper

            # The horse dies with its slot: a `kill -9` of the worker left it (and its job,
            # which dies with the horse) running under init until the task's timeout.
            parent_death_signal(signal.SIGKILL)
            if os.getppid() != getattr(self, "_slot_pid", os.getppid()):
                os._exit(137)  # the slot died before the signal was asked for
            become_subreaper()
            super().main_work_horse(job, queue)

        def subscribe(self) -> None:
            """No RQ command channel: RQ's `kill-horse`, `stop-job` and `shutdown` arrive on a
            pub/sub channel anyone with Redis access can publish to, and kill-horse orphans the
            user's processes. retrain stops jobs through its own abort flag and signals."""

        def register_birth(self) -> None:
            self._take_over_leftover()
            super().register_birth()  # type: ignore[no-untyped-call]
            health.beat(self.home, "worker", self.name, self._health_detail())
            with self.connection.pipeline() as pipe:
                pipe.delete(keys.worker_key(self.name))
                self._advert(
                    pipe,
                    name=self.name,
                    pid=str(os.getpid()),
                    state="idle",
                    task="",
                    task_started="",
                    started=dt.datetime.now(dt.timezone.utc).isoformat(),
                    **getattr(self, "advertised", {}),
                )
                pipe.execute()

        def _take_over_leftover(self) -> None:
            """RQ refuses a name whose record is in Redis and not marked dead; a worker killed
            outright (or whose Redis was stopped under it) leaves one for its TTL. A record
            from this host whose process is gone is this name's own leftover: removed. Any
            other is a worker that may be running: a one-line error."""
            from orchestrator.errors import UserError
            from orchestrator.processes import alive

            raw = self.connection.hmget(self.key, ["hostname", "pid", "death"])
            host, pid, death = (
                (v.decode(errors="replace") if isinstance(v, bytes) else str(v)) if v else None
                for v in raw
            )
            if (host is None and pid is None) or death:
                return
            here = host == socket.gethostname()
            if here and pid is not None and pid.isdigit() and not alive(int(pid)):
                self.connection.delete(self.key)
                return
            raise UserError(
                f"a worker named {self.name!r} is already running (host {host}, pid {pid}); "
                "stop it, or give this one another --name"
            )

        def register_death(self) -> None:
            health.forget(self.home, "worker", self.name)
            try:
                super().register_death()  # type: ignore[no-untyped-call]
                with self.connection.pipeline() as pipe:
                    pipe.delete(keys.worker_key(self.name))
                    pipe.zrem(keys.WORKERS, self.name)
                    pipe.execute()
            except redis_down as exc:  # its advertisement expires on its own
                _redis_down("could not remove this worker's advertisement", exc)

        def maintain_heartbeats(self, job: Any, execution: Any) -> None:
            """RQ's beat while a job runs. Redis unreachable for a while (a restart, a
            failover) is survived: the job goes on, the beat comes again at the next
            monitoring interval; RQ would let the error end the worker and its job."""
            try:
                super().maintain_heartbeats(job, execution)
            except redis_down as exc:
                _redis_down("the worker's heartbeat failed; the job goes on", exc)

        def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
            super().heartbeat(timeout, pipeline)
            if not self.is_horse:
                health.beat(self.home, "worker", self.name, self._health_detail())
            if pipeline is not None:
                self._advert(pipeline)
                return
            with self.connection.pipeline() as pipe:
                self._advert(pipe)
                pipe.execute()

        def set_state(self, state: str, pipeline: Any = None) -> None:
            """RQ's state, and with it the current task: RQ goes busy (in the pipeline that
            records the job's execution, so no extra round trip) and back to idle."""
            super().set_state(state, pipeline)
            value = str(getattr(state, "value", state))
            fields = {"state": "stopping" if self._stop_requested or self._releasing else value}
            if value == "busy" and self.execution is not None:
                fields["task"] = self.execution.job_id
                fields["task_started"] = dt.datetime.now(dt.timezone.utc).isoformat()
            elif value == "idle":
                fields.update(task="", task_started="")
            target: Any = pipeline if pipeline is not None else self.connection
            target.hset(keys.worker_key(self.name), mapping=fields)

        def request_stop(self, signum: int, frame: Any) -> None:
            if self.abort_on_stop and self.horse_pid:
                self.release_job()
            super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

        def request_force_stop(self, signum: int, frame: Any) -> None:
            from rq.utils import now

            # One Ctrl+C reaches a supervised slot twice (the terminal, and the supervisor
            # passing it on): like RQ, a repeat within a second is the same request.
            first = self._shutdown_requested_date
            if first is not None and now() - first < dt.timedelta(seconds=1):
                return
            if self.horse_pid and not self._releasing:
                self.release_job()
            super().request_force_stop(signum, frame)

        def release_job(self) -> None:
            """Stop the running job gracefully and hand its task back to the queue: SIGTERM
            to the work horse, whose job stops the user's process group (grace, then
            SIGKILL) and returns; then a `released` report, which the scheduler applies."""
            from orchestrator.queue import reports

            job = self.get_current_job()
            task_id = job.id if job is not None else None
            payload = job.args[0] if job is not None and job.args else {}
            attempt = int(payload.get("attempt") or 0) if isinstance(payload, dict) else 0
            self._releasing = True
            with contextlib.suppress(Exception):
                self.connection.hset(keys.worker_key(self.name), "state", "stopping")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.horse_pid, signal.SIGTERM)
            self.wait_for_horse()
            self._horse_pid = 0
            if task_id:
                reports.send(
                    self.connection,
                    reports.released(
                        task_id, self.name, f"worker {self.name} was stopped", attempt
                    ),
                    secret=self.worker_secret,
                )
            raise SystemExit(0)

    _AGENT_CLASS = Agent
    return Agent


def supervise(
    queues: Sequence[str],
    chosen: Sequence[tuple[int, ...]],
    *,
    name: str | None,
    burst: bool,
    max_jobs: int | None,
    abort_on_stop: bool = False,
) -> int:
    """One child `retrain worker` per slot; SIGTERM and SIGINT are passed on to all of them
    (each then finishes its current job: RQ's warm shutdown)."""
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    children = []
    for slot in chosen:
        argv = [
            sys.executable,
            "-c",
            "from orchestrator.cli import main; main()",
            "worker",
            "--gpus",
            ",".join(map(str, slot)),
            "--per-job",
            str(len(slot)),
            "--name",
            base,
        ]
        for queue in queues:
            argv += ["--queue", queue]
        if burst:
            argv.append("--burst")
        if max_jobs is not None:
            argv += ["--max-jobs", str(max_jobs)]
        if abort_on_stop:
            argv.append("--abort-on-stop")
        children.append(subprocess.Popen(argv))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
