"""Run every benchmark: `python -m benchmarks [NAME ...]`."""

from __future__ import annotations

import compileall
import os
import sys
from pathlib import Path

from benchmarks import (
    bench_cli,
    bench_datasets,
    bench_demo,
    bench_envbuild,
    bench_jobapi,
    bench_lineage,
    bench_scheduler,
    bench_status,
    bench_tasks,
    bench_workers,
)

BENCHMARKS = {
    "datasets": bench_datasets.main,
    "tasks": bench_tasks.main,
    "scheduler": bench_scheduler.main,
    "workers": bench_workers.main,
    "envbuild": bench_envbuild.main,
    "status": bench_status.main,
    "demo": bench_demo.main,
    "lineage": bench_lineage.main,
    "jobapi": bench_jobapi.main,
    "cli": bench_cli.main,
}


def compile_sources() -> None:
    """Bytecode for retrain's own modules, as an install leaves it (`make .venv` does it for
    the dependencies): where PYTHONDONTWRITEBYTECODE is set, every process the benchmarks
    start would otherwise compile each module it imports, and measure that instead. Modules
    whose bytecode is current are skipped."""
    root = Path(__file__).resolve().parent.parent
    for package in ("orchestrator", "workers"):
        compileall.compile_dir(root / package, quiet=1)


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    compile_sources()
    if os.geteuid() == 0 and not os.environ.get("RETRAIN_JOB_USER"):
        # The benchmarks' workers run the benchmarks' own jobs; as root (a CI machine) they
        # run them as root, which a worker does only when told (`retrain worker --allow-root`).
        os.environ.setdefault("RETRAIN_ALLOW_ROOT", "1")
    failed = [name for name in names if not BENCHMARKS[name]()]
    if failed:
        print(f"\nmissed targets: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
