"""Every everyday `retrain` command as a whole process, and the daemons' start-up.

Targets (issue 15), each printed beside its floor measured in the same run (`python -c
"import sqlite3"` in this venv):
- p50 wall of `dataset create`, `add` (one file), `close`, `tag`, `search`, `show`, `task
  show`, `task run`, `model list`, `history`, `status --json` <= 250 ms and <= 10x the floor,
  on SQLite with the embedded Redis and on PostgreSQL with the machine's Redis;
- `dataset tag ... Production` from the shell: the job the trigger makes is in Redis, and the
  prompt is back, p50 <= 300 ms (both must have happened);
- `retrain scheduler` from exec to its first loop (its health file) <= 1 s;
- `retrain worker` from exec to its advertisement in Redis (no target; shown beside it);
- a standby takes over a SIGKILLed leader within the lease time + 1 s.

Uses RETRAIN_TEST_POSTGRES_URL and RETRAIN_TEST_REDIS_URL (flushed), defaulting to this
machine's services. `RETRAIN_BENCH_RUNS` sets the runs per command (default 5),
`RETRAIN_BENCH_BACKENDS` the stores (default `sqlite,postgresql`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.bench_scheduler import environment
from benchmarks.bench_tasks import REDIS, make_repo

RUNS = int(os.environ.get("RETRAIN_BENCH_RUNS", "5"))
BACKENDS = os.environ.get("RETRAIN_BENCH_BACKENDS", "sqlite,postgresql").split(",")
TARGET_MS = 250.0
TARGET_FLOOR_X = 10.0
TARGET_TAG_TO_JOB_MS = 300.0
TARGET_SCHEDULER_START_S = 1.0
RETRAIN = str(Path(sys.executable).with_name("retrain"))
JOB_QUEUE = "rq:queue:default"  # RQ's list for retrain queue `default`, priority normal

TRIGGERS = """\
version: 1
triggers:
  - name: bench
    on:
      dataset: {project: bench, name: "*", tags: [Production], event: [tagged]}
    run:
      template: bench/train
      queue: default
      overrides: {General/dataset_id: "${dataset.id}"}
    policy: {max_concurrent: 1000}  # no worker runs them: each firing must reach Redis
"""

COMMANDS = (
    "dataset create",
    "dataset add",
    "dataset close",
    "dataset tag",
    "dataset untag",
    "dataset publish",
    "dataset list",
    "dataset search",
    "dataset show",
    "task show",
    "task run",
    "logs",
    "metrics",
    "queue list",
    "model list",
    "history",
    "status --json",
)


class Runner:
    """Runs `retrain ...` in one home and working folder, timing each call."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def __call__(self, *args: str) -> tuple[float, str]:
        start = time.perf_counter()
        done = subprocess.run(
            [RETRAIN, *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = (time.perf_counter() - start) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"retrain {' '.join(args)} failed: {done.stderr.strip()}")
        return elapsed, done.stdout.strip()


def floor_ms(env: dict[str, str]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sqlite3"], env=env, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def commands(run: Runner, work: Path, template_id: str) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    data = work / "batch.csv"
    data.write_text("a,b\n1,2\n")
    version = ""
    for i in range(RUNS):
        ms, version = run("dataset", "create", "--project", "bench", "--name", "data")
        samples["dataset create"].append(ms)
        samples["dataset add"].append(run("dataset", "add", "--files", str(data))[0])
        samples["dataset close"].append(run("dataset", "close")[0])
        samples["dataset tag"].append(run("dataset", "tag", version, f"t{i}")[0])
        samples["dataset untag"].append(run("dataset", "untag", version, f"t{i}")[0])
        samples["dataset publish"].append(run("dataset", "publish", version)[0])
    _ms, queued = run("task", "run", "bench/train")  # a run for logs and metrics (no output yet)
    reads = {
        "dataset search": ("dataset", "search", "--project", "bench"),
        "dataset list": ("dataset", "list", "--id", version),
        "dataset show": ("dataset", "show", version),
        "task show": ("task", "show", template_id),
        "task run": ("task", "run", "bench/train"),
        "logs": ("logs", queued),
        "metrics": ("metrics", queued),
        "queue list": ("queue", "list"),
        "model list": ("model", "list"),
        "history": ("history",),
        "status --json": ("status", "--json"),
    }
    for _ in range(RUNS):
        for name, args in reads.items():
            samples[name].append(run(*args)[0])
    return {name: statistics.median(values) for name, values in samples.items()}


@contextlib.contextmanager
def scheduler(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [RETRAIN, "scheduler", "--triggers", str(cwd / "triggers.yaml")],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(check: Any, timeout: float = 60.0, step: float = 0.002) -> float:
    """Seconds until `check()` is true (polled every `step`)."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"timed out waiting for {check}")
        time.sleep(step)
    return time.perf_counter() - start


def health_file(home: Path, pid: int) -> Path:
    return home / "run" / f"scheduler-{pid}.json"


def leads(home: Path, pid: int) -> bool:
    try:
        return bool(json.loads(health_file(home, pid).read_text())["detail"]["leader"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def daemons(run: Runner, home: Path, redis_url: str) -> dict[str, float]:
    """Scheduler start-up, tag -> job in Redis with the prompt back, standby takeover."""
    import redis

    from orchestrator.queue import keys

    client = redis.Redis.from_url(redis_url)
    starts = []
    for _ in range(3):
        with scheduler(run.env, run.cwd) as proc:
            starts.append(wait_for(lambda p=proc: health_file(home, p.pid).exists()))
    jobs, prompts, both = [], [], []
    with scheduler(run.env, run.cwd) as proc:
        wait_for(lambda: leads(home, proc.pid))
        data = run.cwd / "batch.csv"
        for _ in range(RUNS):
            version = run("dataset", "create", "--project", "bench", "--name", "data")[1]
            run("dataset", "add", "--files", str(data))
            run("dataset", "close")
            before = client.llen(JOB_QUEUE)
            start = time.perf_counter()
            tagger = subprocess.Popen(
                [RETRAIN, "dataset", "tag", version, "Production"],
                env=run.env,
                cwd=run.cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            job = prompt = None
            while job is None or prompt is None:
                now = (time.perf_counter() - start) * 1000
                if now > 60_000:
                    raise RuntimeError("no job 60 s after the tag")
                if job is None and client.llen(JOB_QUEUE) > before:
                    job = now
                if prompt is None and tagger.poll() is not None:
                    prompt = now
                time.sleep(0.001)
            jobs.append(job)
            prompts.append(prompt)
            both.append(max(job, prompt))
    takeover = float("nan")
    with scheduler(run.env, run.cwd) as leader:
        wait_for(lambda: leads(home, leader.pid))
        holder = client.get(keys.SCHEDULER_LEASE)
        with scheduler(run.env, run.cwd) as standby:
            wait_for(lambda: health_file(home, standby.pid).exists())
            leader.send_signal(signal.SIGKILL)
            leader.wait()
            takeover = wait_for(
                lambda: client.get(keys.SCHEDULER_LEASE) not in (None, holder), step=0.01
            )
    workers = []
    for i in range(3):
        name = f"bench-start-{i}"
        proc = subprocess.Popen(
            [RETRAIN, "worker", "--queue", "bench-idle", "--gpus", "none", "--name", name],
            env=run.env,
            cwd=run.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            workers.append(wait_for(lambda n=name: client.exists(keys.worker_key(n))))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    client.close()
    return {
        "worker start": statistics.median(workers),
        "scheduler start": statistics.median(starts),
        "tag -> job": statistics.median(jobs),
        "tag -> prompt": statistics.median(prompts),
        "tag -> both": statistics.median(both),
        "takeover": takeover,
    }


def measure(env: dict[str, str], work: Path, redis_url: str) -> dict[str, float]:
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(env, work)
    make_repo(work / "repo")
    (work / "triggers.yaml").write_text(TRIGGERS)
    template_id = run(
        "task",
        "create",
        "--project",
        "bench",
        "--name",
        "train",
        "--repo",
        str(work / "repo"),
        "--script",
        "train.py",
        "--param",
        "General/dataset_id=none",
        "--queue",
        "default",
    )[1]
    results = commands(run, work, template_id)
    print(f"  {work.name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in results.items()), flush=True)
    results.update(daemons(run, Path(env["RETRAIN_HOME"]), redis_url))
    return results


def sqlite_env(work: Path) -> tuple[dict[str, str], str]:
    from orchestrator.queue.connection import embedded_url
    from orchestrator.settings import Settings

    home = work / "home"
    env = {**os.environ, "RETRAIN_HOME": str(home)}
    for name in ("RETRAIN_DATABASE_URL", "RETRAIN_REDIS_URL", "RETRAIN_STORAGE_URL"):
        env.pop(name, None)
    url = embedded_url(Settings.load(home=home), start=True)
    assert url is not None
    return env, url


def main() -> bool:
    from orchestrator.queue.connection import stop_embedded
    from orchestrator.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="retrain-bench-cli-"))
    results: dict[str, dict[str, float]] = {}
    try:
        env, url = sqlite_env(work / "sqlite")
        try:
            floor = floor_ms(env)
            if "sqlite" in BACKENDS:
                results["sqlite"] = measure(env, work / "sqlite", url)
        finally:
            stop_embedded(Settings.load(home=work / "sqlite" / "home"))
        if "postgresql" in BACKENDS:
            with environment(work / "pg") as pg_env:
                env = {**os.environ, **pg_env}
                results["postgresql"] = measure(env, work / "pg", REDIS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(floor, results)


def report(floor: float, results: dict[str, dict[str, float]]) -> bool:
    limit = min(TARGET_MS, TARGET_FLOOR_X * floor)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cli: p50 wall of {RUNS} runs each (load average {load}, {os.cpu_count()} CPUs)")
    print(
        f'  floor: python -c "import sqlite3"  {floor:6.0f} ms  -> command target <= '
        f"{limit:.0f} ms"
    )
    names = {"sqlite": "SQLite+embedded", "postgresql": "PostgreSQL+Redis"}
    backends = [b for b in ("sqlite", "postgresql") if b in results]
    print(f"  {'command':26}" + "".join(f"{names[b]:>18}" for b in backends))
    ok = True
    for name in COMMANDS:
        values = [results[b][name] for b in backends]
        miss = any(v > limit for v in values)
        ok &= not miss
        cells = "".join(f"{v:15.0f} ms" for v in values)
        print(f"  {name:26}{cells}{'  MISSED' if miss else ''}")
    rows = (
        ("tag -> job in Redis", "tag -> job", None),
        ("tag -> prompt back", "tag -> prompt", None),
        ("tag -> both", "tag -> both", TARGET_TAG_TO_JOB_MS),
    )
    for label, key, target in rows:
        values = [results[b][key] for b in backends]
        miss = target is not None and any(v > target for v in values)
        ok &= not miss
        cells = "".join(f"{v:15.0f} ms" for v in values)
        note = f"  (target <= {target:.0f} ms)" if target else ""
        print(f"  {label:26}{cells}{note}{'  MISSED' if miss else ''}")
    from orchestrator.scheduler.daemon import LEASE_TTL_S

    for label, key, target in (
        ("scheduler exec -> 1st loop", "scheduler start", TARGET_SCHEDULER_START_S),
        ("standby takeover (SIGKILL)", "takeover", LEASE_TTL_S + 1.0),
        ("worker exec -> advertised", "worker start", None),
    ):
        values = [results[b][key] for b in backends]
        miss = target is not None and any(not v <= target for v in values)
        ok &= not miss
        cells = "".join(f"{v:16.2f} s" for v in values)
        note = f"  (target <= {target:.1f} s)" if target is not None else ""
        print(f"  {label:26}{cells}{note}{'  MISSED' if miss else ''}")
    print(f"  {'OK' if ok else 'MISSED'}")
    return ok
