"""Environment builds (issue 10): the cost of confining them, printed beside its baseline in
the same run.

- The demo's pins installed into a new environment with uv's cache warm (so the figure is the
  build, not the downloads), interleaved: confined as a worker confines it (the job sandbox's
  Landlock ruleset, `sandbox.build_policy`, over the install and listing steps) and with no
  confinement (`--sandbox off`). No target: the difference is the confinement's cost.
Needs no Redis. The pins come from the index uv is configured with.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SAMPLES = 5
DEMO_PINS = Path(__file__).resolve().parents[1] / "orchestrator/demo_project/requirements.txt"


def main() -> bool:
    from workers import sandbox
    from workers.envs import EnvCache
    from workers.sandbox_exec import Confinement

    pins = [
        line.strip()
        for line in DEMO_PINS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-envbuild-"))
    saved = os.environ.get("UV_CACHE_DIR")
    os.environ["UV_CACHE_DIR"] = str(work / "uv-cache")
    hidden = sandbox.hidden_for(work / "home", work / "cache", "file:///nonexistent")

    def confine(writable: Sequence[Path]) -> Confinement | None:
        return sandbox.confinement(sandbox.build_policy(writable=writable, hidden=hidden))

    times: dict[str, list[float]] = {"confined": [], "unconfined": []}
    try:
        EnvCache(work / "warm").ensure(pins)  # fills uv's cache
        for i in range(SAMPLES):
            for name, hook in (("unconfined", None), ("confined", confine)):
                start = time.perf_counter()
                EnvCache(work / f"{name}-{i}", confine=hook).ensure(pins)
                times[name].append(time.perf_counter() - start)
    finally:
        if saved is None:
            os.environ.pop("UV_CACHE_DIR", None)
        else:
            os.environ["UV_CACHE_DIR"] = saved
        shutil.rmtree(work, ignore_errors=True)
    print(f"envbuild: {len(pins)} demo pins, uv cache warm, {SAMPLES} builds each, interleaved")
    print(f"  landlock ABI {sandbox.landlock_abi()}, load {os.getloadavg()[0]:.2f}")
    for name, samples in times.items():
        print(
            f"  {name:<12} median {statistics.median(samples):6.3f} s   "
            f"min {min(samples):6.3f} s   max {max(samples):6.3f} s"
        )
    return True
