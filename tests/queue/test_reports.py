"""Worker reports on a real Redis stream, applied to the store on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from orchestrator.queue import reports
from orchestrator.queue.keys import (
    HEARTBEAT_TTL_S,
    REPORTS_DEAD,
    REPORTS_GROUP,
    REPORTS_STREAM,
    heartbeat_key,
    logs_stream,
)
from orchestrator.runtime import Runtime
from orchestrator.scheduler import ingest as ingestion
from orchestrator.store.events import read_events
from orchestrator.store.models import Task, utcnow
from tests.conftest import CLI
from tests.tasks.conftest import Repo, git_repo, machine_redis_url  # noqa: F401  (the fixture, shared)

WORKER = "gpu-host-1/0"



def queued_run(cli: CLI, repo: Repo) -> str:
    template = cli("task", "create", "--project", "team/vision", "--name", "train", "--repo",
                   str(repo.path), "--script", "train.py").out.strip()
    run = cli("task", "run", template).out.strip()
    assert cli.json("task", "show", run)["status"] == "queued"
    return run


def ingest(rt: Runtime, consumer: str = "s1") -> ingestion.Ingest:
    return ingestion.Ingest(rt.redis, rt.tasks, rt.models, consumer)


def events(rt: Runtime) -> list[tuple[str, str, dict[str, Any]]]:
    with rt.store.reader() as session:
        return [(e.kind, e.entity_id, dict(e.payload)) for e in read_events(session, 0)]


def state(rt: Runtime, task_id: str) -> tuple[object, ...]:
    info = rt.tasks.get(task_id)
    models = [(m.id, m.name, m.uri, m.task_id) for m in rt.models.list()]
    return info.model_dump(), models, events(rt)


def finished(task_id: str) -> dict[str, Any]:
    return reports.finished(
        task_id, WORKER, "completed", exit_code=0, error=None, duration_s=12.5,
        metrics={"auc": 0.93, "loss": 1, "note": "text", "nan": float("nan"), "flag": True},
        models=[{"name": "detector", "uri": "s3://bucket/models/detector.pt",
                 "metadata": {"framework": "torch"}}],
        artifacts=[{"path": "plots/roc.png", "uri": "s3://bucket/artifacts/roc.png"}],
    )


def test_keys() -> None:
    assert REPORTS_STREAM == "retrain:reports" and REPORTS_GROUP == "scheduler"
    assert heartbeat_key("abc") == "retrain:heartbeat:abc"
    assert logs_stream("abc") == "retrain:logs:abc" and HEARTBEAT_TTL_S == 90


def test_reports_apply_once(runtime: Runtime, cli: CLI, git_repo: Repo) -> None:  # noqa: F811
    rt = runtime
    run = queued_run(cli, git_repo)
    reports.send(rt.redis, reports.started(run, WORKER))
    # The report is JSON in one field, and the heartbeat key holds the worker with a TTL.
    (_id, fields), = rt.redis.xrange(REPORTS_STREAM)
    body = json.loads(fields[b"data"])
    assert body["kind"] == "started" and body["task_id"] == run and body["worker"] == WORKER
    assert dt.datetime.fromisoformat(body["time"]).utcoffset() == dt.timedelta(0)
    assert rt.redis.get(heartbeat_key(run)) == WORKER.encode()
    assert 0 < rt.redis.ttl(heartbeat_key(run)) <= HEARTBEAT_TTL_S

    first = ingest(rt)
    assert first.step() == 1
    info = rt.tasks.get(run)
    assert info.status == "running" and info.worker == WORKER and info.started_at

    reports.send(rt.redis, reports.heartbeat(run, WORKER))  # the key alone, no entry
    reports.send(rt.redis, finished(run))
    assert first.step() == 1
    info = rt.tasks.get(run)
    assert info.status == "completed" and info.exit_code == 0 and info.error is None
    assert info.metrics == {"auc": 0.93, "loss": 1}
    assert info.duration_s == 12.5
    assert info.artifacts == [{"path": "plots/roc.png", "uri": "s3://bucket/artifacts/roc.png"}]
    models = rt.models.list()
    assert [(m.name, m.uri, m.task_id, m.project, m.metadata) for m in models] == [
        ("detector", "s3://bucket/models/detector.pt", run, "team/vision",
         {"framework": "torch"})]
    kinds = [(k, e) for k, e, _ in events(rt) if e in (run, models[0].id)]
    assert kinds == [("task.created", run), ("task.queued", run), ("task.started", run),
                     ("task.completed", run), ("model.registered", models[0].id)]
    completed = next(p for k, e, p in events(rt) if k == "task.completed")
    assert completed["metrics"] == {"auc": 0.93, "loss": 1}
    assert first.step() == 0
    assert rt.redis.xpending(REPORTS_STREAM, REPORTS_GROUP)["pending"] == 0

    # The worker sends everything again: nothing changes.
    before = state(rt, run)
    for report in (reports.started(run, WORKER), reports.heartbeat(run, WORKER), finished(run)):
        reports.send(rt.redis, report)
    assert first.step() == 2
    assert state(rt, run) == before

    # A crash after applying but before the acknowledgement: the entries stay pending for
    # this consumer, and a new Ingest with the same name applies them again, harmlessly.
    reports.send(rt.redis, reports.started(run, WORKER))
    reports.send(rt.redis, finished(run))
    crashed = ingest(rt)
    for start in ("0", ">"):
        for entry_id, fields_ in crashed._read(start, 100, None):
            crashed.apply_entry(entry_id, fields_)  # applied, never acknowledged
    assert rt.redis.xpending(REPORTS_STREAM, REPORTS_GROUP)["pending"] == 2
    restarted = ingest(rt)
    assert restarted.step() == 2
    assert rt.redis.xpending(REPORTS_STREAM, REPORTS_GROUP)["pending"] == 0
    assert state(rt, run) == before


def test_a_released_run_goes_back_to_its_queue_once(
    runtime: Runtime, cli: CLI, git_repo: Repo  # noqa: F811
) -> None:
    """A worker that stopped mid-job reports `released`: the run is queued again with a fresh
    job, and the same report applied twice changes nothing more."""
    rt = runtime
    run = queued_run(cli, git_repo)
    reports.send(rt.redis, reports.started(run, WORKER))
    ingest(rt).step()
    rt.queues.job(run).set_status("started")  # type: ignore[union-attr]  (as a worker does)
    released = {"kind": "released", "task_id": run, "worker": WORKER, "reason": "stopped"}
    reports.send(rt.redis, released)
    assert ingest(rt).step() == 1
    info = rt.tasks.get(run)
    assert (info.status, info.worker, info.started_at, info.attempt) == ("queued", None, None, 0)
    assert info.error == "re-queued: stopped"
    job = rt.queues.job(run)
    assert job is not None and job.get_status().value == "queued"
    before = state(rt, run)
    reports.send(rt.redis, released)
    assert ingest(rt).step() == 1
    assert state(rt, run) == before
    kinds = [k for k, e, _ in events(rt) if e == run]
    assert kinds == ["task.created", "task.queued", "task.started", "task.queued"]


def test_finished_without_started(runtime: Runtime, cli: CLI, git_repo: Repo) -> None:  # noqa: F811
    """Finishing a task nobody started is refused (dead-lettered): no worker is bound to its
    attempt, so the report cannot be the run's."""
    rt = runtime
    run = queued_run(cli, git_repo)
    reports.send(rt.redis, reports.finished(
        run, WORKER, "failed", exit_code=3, error="Traceback ...\nValueError: bad",
        reason="timeout"))
    assert ingest(rt).step() == 1
    info = rt.tasks.get(run)
    assert info.status == "queued" and info.exit_code is None and info.worker is None
    [dead] = rt.redis.xrange("retrain:reports:dead")
    assert b"nobody started it" in dead[1][b"reason"]
    kinds = [k for k, e, _ in events(rt) if e == run]
    assert kinds == ["task.created", "task.queued"]
    assert rt.models.list() == []


def test_poison_reports_are_acked_and_skipped(
    runtime: Runtime, cli: CLI, git_repo: Repo  # noqa: F811
) -> None:
    rt = runtime
    run = queued_run(cli, git_repo)
    rt.redis.xadd(REPORTS_STREAM, {"data": b"{not json"})
    rt.redis.xadd(REPORTS_STREAM, {"other": "field"})
    rt.redis.xadd(REPORTS_STREAM, {"data": json.dumps({"kind": "exploded", "task_id": run})})
    reports.send(rt.redis, reports.started("0" * 32, WORKER))  # no such task
    reports.send(rt.redis, reports.finished(run, WORKER, "done"))  # not a final status
    reports.send(rt.redis, reports.started(run, WORKER))  # a good one behind them
    before = len(events(rt))
    assert ingest(rt).step() == 6
    assert rt.redis.xpending(REPORTS_STREAM, REPORTS_GROUP)["pending"] == 0
    assert rt.tasks.get(run).status == "running"
    assert len(events(rt)) == before + 1
    with pytest.raises(ValueError, match="kind"):
        reports.send(rt.redis, {"kind": "exploded", "task_id": run})


def test_group_made_on_first_step(runtime: Runtime) -> None:
    rt = runtime
    assert ingest(rt).step(block_ms=1) == 0
    assert [g["name"] for g in rt.redis.xinfo_groups(REPORTS_STREAM)] == [REPORTS_GROUP.encode()]
    assert ingest(rt, "s2").step() == 0  # BUSYGROUP is fine
    rt.redis.delete(REPORTS_STREAM)  # the stream went away: made again
    assert ingest(rt).step() == 0 and rt.redis.exists(REPORTS_STREAM)


def set_started_at(rt: Runtime, task_id: str, when: dt.datetime) -> None:
    with rt.store.session() as session:
        row = session.get(Task, task_id)
        assert row is not None
        row.started_at = when


def test_lost_workers(runtime: Runtime, cli: CLI, git_repo: Repo) -> None:  # noqa: F811
    rt = runtime
    healthy, lost, fresh = (queued_run(cli, git_repo) for _ in range(3))
    for run in (healthy, lost, fresh):
        reports.send(rt.redis, reports.started(run, WORKER))
    assert ingest(rt).step() == 3
    long_ago = utcnow() - dt.timedelta(seconds=10 * HEARTBEAT_TTL_S)
    set_started_at(rt, healthy, long_ago)
    set_started_at(rt, lost, long_ago)
    # The healthy long job keeps beating; the lost one's key expired; `fresh` started just
    # now and has had no time to beat yet, key or not.
    reports.send(rt.redis, reports.heartbeat(healthy, WORKER))
    rt.redis.delete(heartbeat_key(lost), heartbeat_key(fresh))

    assert ingestion.find_lost(rt.redis, rt.store) == [lost]
    assert ingestion.fail_lost(rt.redis, rt.tasks) == [lost]
    info = rt.tasks.get(lost)
    assert info.status == "failed" and info.error == "worker lost: no heartbeat for 90 s"
    assert rt.tasks.get(healthy).status == "running" and rt.tasks.get(fresh).status == "running"
    assert ingestion.fail_lost(rt.redis, rt.tasks) == []
    # Judged later (a given `now`), `fresh` is lost too; the beating job still is not.
    later = utcnow() + dt.timedelta(seconds=2 * HEARTBEAT_TTL_S)
    assert ingestion.find_lost(rt.redis, rt.store, now=later) == [fresh]

    # A finished report arriving after the verdict changes nothing.
    before = state(rt, lost)
    reports.send(rt.redis, reports.finished(lost, WORKER, "completed", exit_code=0))
    assert ingest(rt).step() == 1  # (the heartbeat was the key alone)
    assert state(rt, lost) == before


def test_a_run_whose_end_waits_in_the_stream_is_not_lost(
    runtime: Runtime, cli: CLI, git_repo: Repo, tmp_path: Any  # noqa: F811
) -> None:
    """A job whose run ends while Redis is away sends its end once Redis is back (a4b1a4b);
    if the outage outlived its heartbeat key, the run's fate depends on which comes first:
    the report, or the lost-worker check. `fail_lost` must follow the pending reports, but
    the ingest step backs off on its own after failing through the outage (up to 30 s), so
    the check could come first and record the completed run as failed, "worker lost"
    (attacker pass 3). The check applies the waiting reports itself first."""
    from orchestrator.scheduler.daemon import Scheduler

    rt = runtime
    run = queued_run(cli, git_repo)
    reports.send(rt.redis, reports.started(run, WORKER))
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = Scheduler(rt, triggers, wakeup=False)
    scheduler.ingest.step()
    assert rt.tasks.get(run).status == "running"
    set_started_at(rt, run, utcnow() - dt.timedelta(seconds=10 * HEARTBEAT_TTL_S))
    # Redis comes back: the heartbeat key expired meanwhile, the ingest step is backing off
    # after its failures, and the run's end is in the stream.
    rt.redis.delete(heartbeat_key(run))
    scheduler.steps.failed("ingest", "Error 111 connecting to Redis")
    reports.send(rt.redis, reports.finished(run, WORKER, "completed", exit_code=0))
    scheduler.reconcile(force=True)
    info = rt.tasks.get(run)
    assert (info.status, info.error) == ("completed", None), (info.status, info.error)


def test_heartbeat_ttl(runtime: Runtime, cli: CLI, git_repo: Repo) -> None:  # noqa: F811
    rt = runtime
    run = queued_run(cli, git_repo)
    reports.send(rt.redis, reports.started(run, WORKER), heartbeat_ttl_s=1)
    assert ingest(rt).step() == 1
    assert 0 < rt.redis.pttl(heartbeat_key(run)) <= 1000  # ms: TTL rounds to seconds
    rt.redis.pexpire(heartbeat_key(run), 1)  # let it expire rather than wait for it
    while rt.redis.exists(heartbeat_key(run)):
        pass
    set_started_at(rt, run, utcnow() - dt.timedelta(seconds=HEARTBEAT_TTL_S + 1))
    assert ingestion.fail_lost(rt.redis, rt.tasks) == [run]


def test_an_aborted_run_keeps_what_its_worker_reported(
    runtime: Runtime, cli: CLI, git_repo: Repo  # noqa: F811
) -> None:
    """Abort marks the run `aborted` at once; the worker's final report, which comes later,
    still records how long it ran, in what environment, and its log: `retrain logs` prints
    the stored log once the live one expired. The status and the abort's reason stay."""
    from orchestrator.storage.base import blob_key, sha256_bytes

    rt = runtime
    run = queued_run(cli, git_repo)
    reports.send(rt.redis, reports.started(run, WORKER))
    assert ingest(rt).step() == 1
    assert cli.json("task", "abort", run)["status"] == "aborted"  # type: ignore[index]
    log = b"epoch 1\nepoch 2\nreceived SIGTERM, stopping\n"
    sha = sha256_bytes(log)
    rt.blobs.put_bytes(sha, log)
    uri = f"{rt.settings.storage_url.rstrip('/')}/{blob_key(sha)}"
    environment = {"key": "a" * 24, "hit": True, "tool": "uv", "build_seconds": 0.0,
                   "frozen": ["six==1.16.0"]}
    final = reports.finished(
        run, WORKER, "aborted", exit_code=-15, error="aborted", duration_s=42.5,
        artifacts=[{"path": "output.log", "uri": uri}], environment=environment,
    )
    reports.send(rt.redis, final)
    assert ingest(rt).step() == 1

    shown = cli.json("task", "show", run)
    assert isinstance(shown, dict)
    assert (shown["status"], shown["error"]) == ("aborted", "aborted by user")
    assert shown["duration_s"] == 42.5 and shown["exit_code"] == -15
    assert shown["environment"] == environment
    assert shown["artifacts"] == [{"path": "output.log", "uri": uri}]
    rt.redis.delete(logs_stream(run))  # the live log expired
    assert cli("logs", run).out.splitlines() == ["epoch 1", "epoch 2",
                                                 "received SIGTERM, stopping"]
    # Applied once: the same report again, or a late one, changes nothing.
    before = state(rt, run)
    reports.send(rt.redis, final)
    reports.send(rt.redis, reports.finished(run, WORKER, "completed", exit_code=0,
                                            duration_s=1.0))
    assert ingest(rt).step() == 2
    assert state(rt, run) == before
    kinds = [k for k, e, _ in events(rt) if e == run]
    assert kinds == ["task.created", "task.queued", "task.started", "task.aborted"]


def test_only_a_completed_run_registers_its_models(
    runtime: Runtime, cli: CLI, git_repo: Repo  # noqa: F811
) -> None:
    """A failed (or aborted) run's files under models/ are not models: registering them would
    fire model triggers on the output of a failed training."""
    rt = runtime
    failed, completed = queued_run(cli, git_repo), queued_run(cli, git_repo)
    model = [{"name": "m", "uri": "s3://bucket/models/m.bin", "metadata": {}}]
    for run, status, code in ((failed, "failed", 4), (completed, "completed", 0)):
        reports.send(rt.redis, reports.started(run, WORKER))
        reports.send(rt.redis, reports.finished(run, WORKER, status, exit_code=code,
                                                models=model))
    ingest(rt).step()
    assert rt.tasks.get(failed).status == "failed"
    assert [m.task_id for m in rt.models.list()] == [completed]


def test_a_stopping_scheduler_applies_the_reports_that_arrived(
    runtime: Runtime, cli: CLI, git_repo: Repo, tmp_path: Any  # noqa: F811
) -> None:
    """Under `retrain up` the workers stop first and send their last reports; the scheduler
    stopping after them applies those before it exits, so the store does not say `running`
    after `up` has ended."""
    import threading
    import time

    from orchestrator.scheduler.daemon import Scheduler

    rt = runtime
    run = queued_run(cli, git_repo)
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = Scheduler(Runtime(), triggers, poll_interval=3600, wakeup=False)
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while scheduler.lease.leader() != scheduler.lease.holder:
            assert time.monotonic() < deadline, "the scheduler never led"
            time.sleep(0.05)
        time.sleep(0.5)  # past its first tick: now it waits out its hour-long interval
        reports.send(rt.redis, reports.started(run, WORKER))
        reports.send(rt.redis, reports.finished(run, WORKER, "completed", exit_code=0))
    finally:
        scheduler.stop()
        thread.join(timeout=60)
        scheduler.runtime.close()
    assert rt.tasks.get(run).status == "completed"


def _series(points: int) -> dict[str, Any]:
    return {"count": points, "last": 0.1, "step": points - 1, "min": 0.1, "max": 1.0,
            "points": [[i, 1.0 / (i + 1)] for i in range(points)]}


def test_series_are_stored_with_the_run_and_compared(
    runtime: Runtime, cli: CLI, git_repo: Repo  # noqa: F811
) -> None:
    rt = runtime
    first, second = queued_run(cli, git_repo), queued_run(cli, git_repo)
    sent = {}
    for run, loss in ((first, 0.1), (second, 0.2)):
        reports.send(rt.redis, reports.started(run, WORKER))
        report = reports.finished(
            run, WORKER, "completed", exit_code=0, metrics={"loss": loss, "rows": 3},
            series={"loss": {**_series(10), "last": loss}, "lr": _series(5)},
            logged_params={"General/lr": 0.1 if run == first else 0.3, "General/epochs": 3})
        reports.send(rt.redis, report)
        sent[run] = report
    assert ingest(rt).step() == 4
    shown = cli.json("task", "show", first)
    assert isinstance(shown, dict)
    assert shown["series"]["loss"] == {"count": 10, "last": 0.1, "step": 9, "min": 0.1,
                                       "max": 1.0}
    assert shown["logged_params"] == {"General/lr": 0.1, "General/epochs": 3}
    assert len(rt.tasks.series(first)["lr"]["points"]) == 5
    [completed] = [p for k, i, p in events(rt) if k == "task.completed" and i == first]
    assert completed["series"]["loss"] == {"last": 0.1, "min": 0.1, "max": 1.0}

    # Applying the same report again changes nothing: it is refused (a final report is
    # applied once; a repeat would register its models again).
    before = state(rt, first), rt.tasks.series(first)
    with pytest.raises(reports.BadReport, match="already ended"):
        ingest(rt).apply(reports.parse({"data": json.dumps(sent[first])}))
    assert (state(rt, first), rt.tasks.series(first)) == before

    compared = cli.json("task", "compare", first, second)
    assert isinstance(compared, dict)
    assert compared["logged"]["General/lr"] == [0.1, 0.3]
    assert compared["metrics"]["loss"] == [0.1, 0.2]
    assert compared["different"] == ["logged.General/lr", "metrics.loss"]
    table = cli("task", "compare", first, second).out
    assert any(line.startswith("*") and "metric loss" in line for line in table.splitlines())
    assert not any(line.startswith("*") and "rows" in line for line in table.splitlines())
    assert "two or more" in cli("task", "compare", first, expect=2).err
    assert "no task" in cli("metrics", "0" * 32, expect=2).err.lower()
    assert "choose one" in cli("metrics", first, "--json", "--csv", expect=2).err
    # New-user pass, round 2: `-f --json` is one object a line, also when the run had ended
    # before the follow began (it was the pretty-printed object, over many lines).
    followed = cli("metrics", first, "-f", "--json")
    [line] = followed.out.splitlines()
    assert json.loads(line)["series"]["loss"]["last"] == 0.1
    assert json.loads(line)["status"] == "completed"


def test_series_past_the_limits_are_refused_and_the_builder_cuts(
    runtime: Runtime, cli: CLI, git_repo: Repo  # noqa: F811
) -> None:
    rt = runtime
    run = queued_run(cli, git_repo)
    reports.send(rt.redis, reports.started(run, WORKER))
    over = reports.finished(run, WORKER, "completed",
                            series={"loss": _series(reports.MAX_SERIES_POINTS + 1)})
    reports.send(rt.redis, over)
    assert ingest(rt).step() == 2
    assert rt.tasks.get(run).status == "running"
    [(_id, dead)] = rt.redis.xrange(REPORTS_DEAD)
    assert b"series points, more than the" in dead[b"reason"]
    many = {f"s{i}": _series(1) for i in range(reports.MAX_SERIES + 5)}
    cut = reports.finished(run, WORKER, "completed", series=many)
    assert len(cut["series"]) == reports.MAX_SERIES
    assert "5 metric series" in cut["error"]


def test_a_job_cannot_push_its_finished_report_past_the_byte_limit() -> None:
    # 1000 logged params of ~1 KB and ~300 KB of log_model metadata: each part within its
    # count limit, the whole over MAX_REPORT_BYTES. The builder must keep the report
    # parseable (the ingest dead-letters one over the limit, and the run's outcome with it).
    params = {f"p{i:04d}": "x" * 1000 for i in range(1000)}
    models = [{"name": "net", "uri": "s3://b/net.tar",
               "metadata": {f"k{i}": "y" * 1000 for i in range(300)}}]
    report = reports.finished("t-1", WORKER, "failed", exit_code=3, error="boom",
                              logged_params=params, models=models,
                              series={"loss": _series(100)})
    data = json.dumps({"time": reports.now_iso(), **report}, default=str, separators=(",", ":"))
    parsed = reports.parse({"data": data})
    assert len(data.encode()) <= reports.MAX_REPORT_BYTES
    assert parsed["status"] == "failed" and parsed["exit_code"] == 3
    assert parsed["error"].startswith("boom")
    assert "left out" in parsed["error"] or "cut" in parsed["error"]
    assert [m["name"] for m in parsed["models"]] == ["net"]
    # One huge value cannot crowd out everything else either.
    one = reports.finished("t-1", WORKER, "completed", exit_code=0,
                           logged_params={"big": "z" * 2_000_000, "small": 1})
    data = json.dumps({"time": reports.now_iso(), **one}, default=str, separators=(",", ":"))
    assert reports.parse({"data": data})["logged_params"]["small"] == 1
    # Every optional part large at once: dropped largest first until the report fits.
    mixed = reports.finished(
        "t-1", WORKER, "completed", exit_code=0,
        series={f"s{i}": _series(20) for i in range(1000)},
        logged_params={f"p{i:04d}": "x" * 300 for i in range(1000)},
        models=[{"name": f"m{i}", "uri": "s3://b/m", "metadata": {"k": "y" * 34_000}}
                for i in range(10)],
        environment={"pip": "z" * 350_000},
    )
    data = json.dumps({"time": reports.now_iso(), **mixed}, default=str, separators=(",", ":"))
    parsed = reports.parse({"data": data})
    assert parsed["status"] == "completed" and parsed["exit_code"] == 0
    assert len(parsed["series"]) == 1000 and len(parsed["models"]) == 10
    assert parsed["error"].endswith("all series points, all environment"), parsed["error"]
    assert len(parsed["logged_params"]) == 1000 and "environment" not in parsed
    assert all(m["metadata"] for m in parsed["models"])
    assert all("points" not in s for s in parsed["series"].values())
