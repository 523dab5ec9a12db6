"""What a worker slot says when it starts: one structured line naming what it serves.

An operator reading a service's log (journald, a container runtime) must see which queues a
worker takes jobs from, on which GPUs, with which cache and storage, without a terminal;
the CLI configures the format (`orchestrator.logs`: JSON off a terminal, as the scheduler).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import structlog

from orchestrator.redact import redact_url
from orchestrator.settings import Settings
from workers.gpus import Gpu

log = structlog.get_logger("retrain.worker")


def announce(
    worker: Any,
    queues: Sequence[str],
    slot: tuple[int, ...],
    detected: Sequence[Gpu],
    settings: Settings,
    **options: Any,
) -> None:
    """Log `worker started` for an RQ worker about to serve `slot`: its name, the retrain and
    RQ queues it reads in order, its GPUs and CUDA_VISIBLE_DEVICES, its cache and storage,
    and `options` (burst, max_jobs, ...). No credential: URLs are redacted."""
    log.info(
        "worker started",
        worker=worker.name,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=list(queues),
        rq_queues=list(worker.queue_names()),
        slot=list(slot),
        gpus=[asdict(gpu) for gpu in detected if gpu.index in slot],
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        cache_dir=str(settings.resolved_cache_dir),
        storage=redact_url(settings.storage_url),
        redis=redact_url(settings.redis_url) if settings.redis_url else "embedded",
        **options,
    )
