"""Lineage reads with many runs stored: `task list --dataset`, `dataset show` and `model show`.

Each is a handful of index lookups (`task_inputs` by version, `tasks.trigger_entity_id`,
`models.task_id`), so its time should not grow with the number of tasks. The store is the
default SQLite file with 100,000 runs, 20 of which used the version; every figure is the CLI's
median wall time, next to `task list` and a bare interpreter measured in the same run.
The queries are also timed in process (target 20 ms), apart from the CLI's start-up (importing
SQLAlchemy and pydantic), which `model list`, a command this work did not change, shows too.
Target: the everyday-command budget, 250 ms on a quiet machine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 100_000
USING = 20
TARGET_MS = 250
TARGET_QUERY_MS = 20
CLI_RUNS = 7


def build(work: Path) -> tuple[str, str]:
    """A store with RUNS runs of one template; USING of them took the version as an input
    and every other one of those was fired by it. Returns (version id, model id)."""
    from sqlalchemy import insert

    from benchmarks.bench_tasks import make_repo
    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings
    from orchestrator.store.models import Task, TaskInput, new_id, utcnow
    from orchestrator.tasks.spec import TaskDefinition

    runtime = Runtime(Settings.load(home=work / "home"))
    try:
        make_repo(work / "repo")
        version = runtime.datasets.create("bench", "labels")
        version_id = runtime.datasets.finalize(version.id).version.id
        template = runtime.tasks.create(
            TaskDefinition(
                project="bench",
                name="train",
                repo=str(work / "repo"),
                script="train.py",
                params={"General/dataset_id": ""},
                inputs={"data": "${params.General/dataset_id}"},
            )
        )
        with runtime.store.session() as session:
            row = session.get(Task, template.id)
            assert row is not None
            base = {
                "project_id": row.project_id,
                "name": row.name,
                "type": row.type,
                "status": "completed",
                "comment": "",
                "parent_id": row.id,
                "queue": row.queue,
                "priority": "normal",
                "spec": row.spec,
                "inputs": row.inputs,
                "metrics": {},
            }
            every = RUNS // USING
            tasks, links, model_task = [], [], ""
            for i in range(RUNS):
                task_id = new_id()
                uses = i % every == 0
                other = f"{i:032x}"
                tasks.append(
                    {
                        **base,
                        "id": task_id,
                        "created_at": utcnow(),
                        "parameters": {"General/dataset_id": version_id if uses else other},
                        "resolved_inputs": {"data": {"version_id": version_id}} if uses else {},
                        "trigger_name": "retrain" if uses and i % (2 * every) == 0 else None,
                        "trigger_entity_kind": "dataset" if uses else None,
                        "trigger_entity_id": version_id if uses and i % (2 * every) == 0 else None,
                    }
                )
                if uses:
                    links.append({"task_id": task_id, "name": "data", "version_id": version_id})
                    model_task = task_id
            for start in range(0, RUNS, 5000):
                session.execute(insert(Task), tasks[start : start + 5000])
            session.execute(insert(TaskInput), links)
        model = runtime.models.register("bench", "model", "s3://bucket/m.pt", task_id=model_task)
        return version_id, model.id
    finally:
        runtime.close()


def median_ms(command: list[str], env: dict[str, str]) -> float:
    samples = []
    for _ in range(CLI_RUNS):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> bool:
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-lineage-"))
    try:
        started = time.perf_counter()
        version_id, model_id = build(work)
        built = time.perf_counter() - started
        env = {**os.environ, "RETRAIN_HOME": str(work / "home")}
        for name in ("RETRAIN_DATABASE_URL", "RETRAIN_REDIS_URL"):
            env.pop(name, None)
        retrain = str(Path(sys.executable).with_name("retrain"))
        listed = subprocess.run(
            [retrain, "task", "list", "--dataset", version_id, "--limit", "100", "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert listed.count('"parent"') == USING, "the store was not built as intended"
        queries = in_process(work, version_id, model_id)
        figures = {
            "task list": median_ms([retrain, "task", "list"], env),
            "task list --dataset": median_ms(
                [retrain, "task", "list", "--dataset", version_id], env
            ),
            "dataset show": median_ms([retrain, "dataset", "show", version_id], env),
            "model show": median_ms([retrain, "model", "show", model_id], env),
            "model list (unchanged)": median_ms([retrain, "model", "list"], env),
        }
        floor = median_ms([sys.executable, "-c", "pass"], env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"lineage: SQLite, {RUNS:,} runs ({USING} used the version), built in {built:.0f} s")
    print(f"  in process (the queries alone; target <= {TARGET_QUERY_MS} ms):")
    for name, ms in queries.items():
        print(f"    {name:28s} {ms:6.1f} ms median of {CLI_RUNS}")
    print("  the CLI, start to exit:")
    for name, ms in figures.items():
        print(f"    retrain {name:22s} {ms:6.0f} ms median of {CLI_RUNS}")
    print(f"  (target <= {TARGET_MS} ms on a quiet machine; bare `python -c pass`: {floor:.0f} ms)")
    return all(ms <= TARGET_QUERY_MS for ms in queries.values()) and all(
        ms <= TARGET_MS for name, ms in figures.items() if "unchanged" not in name
    )


def in_process(work: Path, version_id: str, model_id: str) -> dict[str, float]:
    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings
    from orchestrator.tasks.lineage import model_lineage, version_usage

    runtime = Runtime(Settings.load(home=work / "home"))
    calls = {
        "runs of a version (dataset show)": lambda: version_usage(runtime.store, version_id),
        "model lineage (model show)": lambda: model_lineage(runtime.store, model_id),
        "task list --dataset": lambda: runtime.tasks.list(dataset=version_id),
        "task list": lambda: runtime.tasks.list(),
    }
    try:
        out = {}
        for name, call in calls.items():
            call()
            samples = []
            for _ in range(CLI_RUNS):
                start = time.perf_counter()
                call()
                samples.append((time.perf_counter() - start) * 1000)
            out[name] = statistics.median(samples)
        return out
    finally:
        runtime.close()


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
