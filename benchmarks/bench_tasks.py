"""Tasks: `task run` throughput (clone + enqueue) in-process, and the CLI's start-up time.

Targets (issue 3): >= 500 tasks/s against real Redis and PostgreSQL on this machine, and
`retrain task list` <= 300 ms. The CLI figure is printed next to the floor of starting a bare
Python interpreter, measured in the same run. Uses RETRAIN_TEST_POSTGRES_URL and
RETRAIN_TEST_REDIS_URL (as .ci/run sets them), defaulting to this machine's services.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TASKS = 1000
TARGET_TASKS_PER_S = 500
TARGET_CLI_MS = 300
THREADS = 4
BATCH = 100
CLI_RUNS = 10
PG = os.environ.get("RETRAIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("RETRAIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def admin_sql(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE, bulk fills)."""
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1))
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()


def make_repo(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "train.py").write_text("print('hi')\n")
    git = ["git", "-c", "user.email=b@b", "-c", "user.name=b"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=path, check=True)


def throughput(work: Path) -> tuple[float, float, float]:
    import redis
    from sqlalchemy.engine import make_url

    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings
    from orchestrator.tasks.spec import TaskDefinition

    server = make_url(PG)
    admin = server.set(drivername="postgresql").render_as_string(False)
    name = f"retrain_bench_{uuid.uuid4().hex[:8]}"
    admin_sql(admin, f'CREATE DATABASE "{name}"')
    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    settings = Settings.load(
        home=work / "home",
        database_url=server.set(database=name).render_as_string(False),
        redis_url=REDIS,
    )
    runtime = Runtime(settings)
    try:
        make_repo(work / "repo")
        template = runtime.tasks.create(
            TaskDefinition(
                project="bench",
                name="train",
                repo=str(work / "repo"),
                script="train.py",
                params={"General/dataset_id": "", "Args/epochs": 1},
                queue="bench",
            )
        )
        runtime.tasks.run(template.id)  # warm connections and caches

        def run_slice(offset: int, count: int) -> None:
            for i in range(offset, offset + count):
                runtime.tasks.run(template.id, params={"General/dataset_id": f"v{i}"})

        rates = []
        for threads in (1, THREADS):
            per = TASKS // threads
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                for future in [
                    pool.submit(run_slice, t * per + len(rates) * TASKS, per)
                    for t in range(threads)
                ]:
                    future.result()
            rates.append(per * threads / (time.perf_counter() - start))
        start = time.perf_counter()
        for batch in range(0, TASKS, BATCH):
            runtime.tasks.run_many(
                template.id, [{"General/dataset_id": f"b{i}"} for i in range(batch, batch + BATCH)]
            )
        rates.append(TASKS / (time.perf_counter() - start))
        assert runtime.queues.counts("bench")["normal"] == 3 * TASKS + 1
        return rates[0], rates[1], rates[2]
    finally:
        runtime.close()
        client.flushdb()
        client.close()
        admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def median_ms(command: list[str], env: dict[str, str]) -> float:
    samples = []
    for _ in range(CLI_RUNS):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> bool:
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-tasks-"))
    try:
        sequential, concurrent, batched = throughput(work)
        env = {**os.environ, "RETRAIN_HOME": str(work / "cli-home")}
        env.pop("RETRAIN_DATABASE_URL", None)
        retrain = str(Path(sys.executable).with_name("retrain"))
        subprocess.run([retrain, "task", "list"], env=env, check=True, stdout=subprocess.DEVNULL)
        cli = median_ms([retrain, "task", "list"], env)
        floor = median_ms([sys.executable, "-c", "pass"], env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = max(concurrent, batched) >= TARGET_TASKS_PER_S and cli <= TARGET_CLI_MS
    print("tasks: clone + enqueue (one transaction + one RQ enqueue each), PostgreSQL, Redis")
    print(f"  task run, 1 caller   {sequential:7.0f} tasks/s")
    print(f"  task run, {THREADS} callers  {concurrent:7.0f} tasks/s")
    print(
        f"  run_many, {BATCH} per transaction  {batched:7.0f} tasks/s  (target >= "
        f"{TARGET_TASKS_PER_S}; the scheduler's burst path)"
    )
    print(
        f"  retrain task list    {cli:7.0f} ms median of {CLI_RUNS}  (target <= "
        f"{TARGET_CLI_MS}; bare `python -c pass` here: {floor:.0f} ms)"
    )
    print(f"  {'OK' if ok else 'MISSED'}")
    return ok
