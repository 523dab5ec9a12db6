"""Finalize 10,000 files of 1 KiB on local storage, then a child version changing one file.

Targets (design brief, issue 2): first finalize <= 5 s, child <= 1 s, and the child uploads
exactly one file blob (plus its manifest). Times are wall-clock on this machine, through the
same service the CLI calls; "add" (hash + stage) and "finalize" (upload + commit) are reported
apart and together.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

FILES = 10_000
SIZE = 1024
TARGET_FIRST_S = 5.0
TARGET_CHILD_S = 1.0


def make_files(root: Path) -> None:
    for i in range(FILES):
        shard = root / f"shard-{i % 100:03d}"
        shard.mkdir(parents=True, exist_ok=True)
        (shard / f"sample-{i:05d}.bin").write_bytes(i.to_bytes(4, "big") * (SIZE // 4))


def main() -> bool:
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    os.environ["RETRAIN_HOME"] = str(work / "home")
    for name in ("RETRAIN_DATABASE_URL", "RETRAIN_STORAGE_URL", "RETRAIN_CACHE_DIR"):
        os.environ.pop(name, None)
    from orchestrator.runtime import Runtime

    runtime = Runtime()
    service = runtime.datasets
    try:
        data = work / "data"
        make_files(data)
        service.store.ensure_schema()

        t0 = time.perf_counter()
        v1 = service.create("bench", "files")
        service.add_files(v1.id, [str(data)])
        t1 = time.perf_counter()
        first = service.finalize(v1.id)
        t2 = time.perf_counter()

        changed = data / "shard-007" / "sample-00007.bin"
        changed.write_bytes(b"changed" * 100)
        t3 = time.perf_counter()
        v2 = service.create("bench", "files", parents=[v1.id])
        service.add_files(v2.id, [str(changed)], dataset_path="shard-007")
        t4 = time.perf_counter()
        child = service.finalize(v2.id)
        t5 = time.perf_counter()

        first_total = t2 - t0
        child_total = t5 - t3
        one_blob = child.uploaded_blobs == 1 and child.version.file_count == FILES
        print(f"datasets: {FILES} files of {SIZE} B, local storage, SQLite store")
        print(
            f"  first version  add {t1 - t0:6.2f} s  finalize {t2 - t1:6.2f} s  "
            f"total {first_total:6.2f} s  (target <= {TARGET_FIRST_S:.0f} s)  "
            f"uploaded {first.uploaded_blobs} blobs, {first.uploaded_bytes} B"
        )
        print(
            f"  child (1 file) add {t4 - t3:6.2f} s  finalize {t5 - t4:6.2f} s  "
            f"total {child_total:6.2f} s  (target <= {TARGET_CHILD_S:.0f} s)  "
            f"uploaded {child.uploaded_blobs} blob, {child.uploaded_bytes} B"
        )
        print("  baseline: none run here (no peer tool installed side by side)")
        ok = first_total <= TARGET_FIRST_S and child_total <= TARGET_CHILD_S and one_blob
        print(f"  {'OK' if ok else 'MISSED'}")
        return ok
    finally:
        runtime.close()
        shutil.rmtree(work, ignore_errors=True)
