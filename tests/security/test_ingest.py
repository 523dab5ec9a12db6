"""Promise 4 of the trust boundary: ingestion cannot be stopped or starved.

Anyone with Redis access can add entries to the report stream. Each attack here writes with
plain redis-py, then the scheduler's `Ingest` runs one step against the real store (SQLite and
PostgreSQL): a malformed, oversized or out-of-range entry is dead-lettered (kept, with its
reason, and acknowledged) and never blocks the real report behind it; a flood of junk cannot
delay a `finished` past one step; entries are trimmed only once acknowledged."""

from __future__ import annotations

import json

from orchestrator.queue import keys, reports
from orchestrator.runtime import Runtime
from orchestrator.scheduler.ingest import Ingest
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo

git_repo = task_fixtures.git_repo



def running(cli: CLI, repo: Repo, rt: Runtime) -> str:
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo", str(repo.path),
                   "--script", "train.py").out.strip()
    run = cli("task", "run", template).out.strip()
    reports.send(rt.redis, reports.started(run, "w1"))
    return run


def plant(rt: Runtime, data: str | bytes) -> None:
    rt.redis.xadd(keys.REPORTS_STREAM, {reports.FIELD: data})


def dead_letters(rt: Runtime) -> list[str]:
    return [e[b"reason"].decode() for _id, e in rt.redis.xrange(keys.REPORTS_DEAD)]


def test_poison_is_dead_lettered_and_never_blocks_the_next_report(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    run = running(cli, git_repo, runtime)
    plant(runtime, "[" * 200_000 + "]" * 200_000)  # RecursionError in json
    plant(runtime, json.dumps({"kind": "finished", "task_id": run, "worker": "w1",
                               "status": "failed", "exit_code": 10**30}))
    plant(runtime, json.dumps({"kind": "finished", "task_id": run, "worker": "w1",
                               "status": "failed", "error": "x" * (2 * 1024 * 1024)}))
    plant(runtime, json.dumps({"kind": "finished", "task_id": run, "worker": "w1",
                               "status": "completed",
                               "metrics": {f"m{i}": i for i in range(2_000)}}))
    plant(runtime, b"\xff\xfe not even text")
    reports.send(runtime.redis, reports.finished(run, "w1", "completed", exit_code=0,
                                                 metrics={"auc": 0.9}))
    ingest = Ingest(runtime.redis, runtime.tasks, runtime.models, "scheduler")
    ingest.step()

    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed" and shown["metrics"] == {"auc": 0.9}, shown
    reasons = dead_letters(runtime)
    assert len(reasons) == 5, reasons
    assert any("exit_code" in r for r in reasons) and any("bytes" in r for r in reasons)
    assert any("metrics" in r for r in reasons), reasons
    pending = runtime.redis.xpending(keys.REPORTS_STREAM, keys.REPORTS_GROUP)
    assert pending["pending"] == 0
    assert ingest.step() == 0  # nothing is retried forever


def test_a_flood_cannot_delay_a_finished_past_one_step(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    run = running(cli, git_repo, runtime)
    pipe = runtime.redis.pipeline(transaction=False)
    junk = json.dumps({"kind": "heartbeat", "task_id": run, "worker": "attacker"})
    for _ in range(15_000):
        pipe.xadd(keys.REPORTS_STREAM, {reports.FIELD: junk})
    pipe.execute()
    reports.send(runtime.redis, reports.finished(run, "w1", "completed", exit_code=0))
    Ingest(runtime.redis, runtime.tasks, runtime.models, "scheduler").step()
    assert cli.json("task", "show", run)["status"] == "completed"
    assert runtime.redis.xlen(keys.REPORTS_STREAM) <= 1  # the flood is gone once acknowledged


def test_reports_are_trimmed_only_once_acknowledged(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    run = running(cli, git_repo, runtime)
    ingest = Ingest(runtime.redis, runtime.tasks, runtime.models, "scheduler")
    ingest.step()
    # A report delivered to another scheduler that died before acknowledging it.
    reports.send(runtime.redis, reports.finished(run, "w1", "completed", exit_code=0))
    runtime.redis.xreadgroup(keys.REPORTS_GROUP, "crashed", {keys.REPORTS_STREAM: ">"})
    for _ in range(50):
        reports.send(runtime.redis, reports.heartbeat(run, "w1"))
    ingest.trim()
    entries = runtime.redis.xrange(keys.REPORTS_STREAM)
    assert any(b"finished" in e[reports.FIELD.encode()] for _id, e in entries), entries
    # Heartbeats are liveness (a key with a TTL), not stream entries.
    assert runtime.redis.xlen(keys.REPORTS_STREAM) <= 3
    assert runtime.redis.ttl(keys.heartbeat_key(run)) > 0


def test_a_nul_in_a_real_report_does_not_lose_the_run(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    """PostgreSQL refuses NUL in text and JSON: a job that printed one (in its error tail, a
    metric's name, its environment) must still end in the state it reached."""
    run = running(cli, git_repo, runtime)
    reports.send(runtime.redis, reports.finished(
        run, "w1", "failed", exit_code=3, error="boom\x00bang",
        metrics={"acc\x00": 0.9}, environment={"key": "k\x00"},
        artifacts=[{"path": "a\x00.txt", "uri": "s3://b/x"}]))
    Ingest(runtime.redis, runtime.tasks, runtime.models, "scheduler").step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "failed" and shown["exit_code"] == 3, shown
    assert "\x00" not in json.dumps(shown) and shown["error"].startswith("boom")
    assert dead_letters(runtime) == []
