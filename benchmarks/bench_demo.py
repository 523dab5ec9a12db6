"""`make demo` wall time, cold and warm (issue 6: under 3 minutes on this machine, cold).

Cold: an empty uv cache, so the training environment's packages (scikit-learn, numpy,
scipy...) are downloaded and installed; warm: the same cache again. Each run is the real
`python -m orchestrator.demo` in its own temporary RETRAIN_HOME (so every run also builds
its environment cache from scratch; uv's download cache is what differs). The figure beside
each: the environment build the demo reported, and the target.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

TARGET_S = 180.0


def _run(uv_cache: str) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env["UV_CACHE_DIR"] = uv_cache
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise RuntimeError(f"the demo exited {done.returncode}")
    built = re.search(r"built in ([\d.]+) s", done.stdout)
    return elapsed, f"environment built in {built.group(1)} s" if built else "no build seen"


def main() -> bool:
    print("\n== make demo (python -m orchestrator.demo), wall time ==")
    cache = tempfile.mkdtemp(prefix="retrain-bench-uv-")
    try:
        cold, cold_note = _run(cache)
        warm, warm_note = _run(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"  cold (empty uv cache): {cold:6.1f} s   ({cold_note})   target <= {TARGET_S:.0f} s")
    print(f"  warm (uv cache kept):  {warm:6.1f} s   ({warm_note})")
    ok = cold <= TARGET_S
    print(f"  {'OK' if ok else 'MISSED'}: cold demo within {TARGET_S:.0f} s")
    return ok
