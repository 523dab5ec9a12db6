"""`retrain worker`: RQ workers on this host, one per GPU slot.

A slot is a group of `--per-job` GPUs. One slot runs in this process; several are supervised
as child processes, one per slot, each with its own CUDA_VISIBLE_DEVICES, so four GPUs with
`--per-job 1` run four jobs at once. Every slot claims its devices with host-level locks
first, so two workers on one host can never share a GPU. Each slot is a forking RQ worker
(never SimpleWorker: a job runs in its own work horse, and a crash there cannot take the
worker down) reading JSON jobs from the queues in priority order.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from orchestrator.queue import keys
from workers.gpus import claim, cuda_visible_devices, detect, parse_gpus, slots

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
) -> int:
    """Run until stopped (or, with `burst`, until the queues are empty). Returns an exit code."""
    detected = detect()
    chosen = slots(parse_gpus(gpus, detected), per_job)
    if len(chosen) == 1:
        return run_slot(queues, chosen[0], name=name, burst=burst, max_jobs=max_jobs)
    return supervise(queues, chosen, name=name, burst=burst, max_jobs=max_jobs)


def run_slot(
    queues: Sequence[str],
    slot: tuple[int, ...],
    *,
    name: str | None,
    burst: bool,
    max_jobs: int | None,
) -> int:
    """One forking RQ worker holding the claim on `slot`'s GPUs."""
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer

    from orchestrator.queue.connection import client
    from orchestrator.settings import Settings

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
        redis = client(Settings.load())
        names = [rq_name for queue in queues for rq_name in keys.rq_queues_in_order(queue)]
        worker = Worker(
            [Queue(n, connection=redis, serializer=JSONSerializer) for n in names],
            connection=redis,
            serializer=JSONSerializer,
            name=worker_name(name, slot),
        )
        worked = worker.work(
            burst=burst, max_jobs=max_jobs, with_scheduler=False, logging_level="WARNING"
        )
        return 0 if worked or burst else 1


def supervise(
    queues: Sequence[str],
    chosen: Sequence[tuple[int, ...]],
    *,
    name: str | None,
    burst: bool,
    max_jobs: int | None,
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
        children.append(subprocess.Popen(argv))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
