"""Promise 3 of the trust boundary: payloads and reports are signed, reports are bound to the
attempt and the worker that got it, and a worker back from the dead is fenced off.

The attacker holds Redis access only (no worker secret) and writes with plain redis-py; the
"other worker" tests play a worker host that holds the secret but reports on an attempt it was
never given. Real store (SQLite and PostgreSQL), real Redis, and for the fencing test real
worker processes, one of them frozen with SIGSTOP past the heartbeat TTL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.queue import keys, reports
from orchestrator.queue.adapter import QueueAdapter
from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.scheduler.ingest import Ingest
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo
SECRET = "s3cret-shared-by-scheduler-and-workers"


@pytest.fixture(autouse=True)
def worker_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler, the CLI and the workers of these tests share it (set before any
    `Runtime` or process reads its settings)."""
    monkeypatch.setenv("RETRAIN_WORKER_SECRET", SECRET)



def queued(cli: CLI, repo: Repo, *extra: str) -> str:
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo", str(repo.path),
                   "--script", "train.py", "--queue", "gpu", *extra).out.strip()
    return cli("task", "run", template).out.strip()


def ingest(rt: Runtime) -> Ingest:
    return Ingest(rt.redis, rt.tasks, rt.models, "scheduler", secret=SECRET)


def refused(rt: Runtime) -> list[str]:
    return [e[b"reason"].decode() for _id, e in rt.redis.xrange(keys.REPORTS_DEAD)]


def test_reports_without_the_worker_secret_are_refused(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    run = queued(cli, git_repo)
    forged = reports.finished(run, "attacker", "completed", exit_code=0, metrics={"acc": 0.999})
    data = json.dumps(forged)
    runtime.redis.xadd(keys.REPORTS_STREAM, {reports.FIELD: data})  # unsigned
    runtime.redis.xadd(keys.REPORTS_STREAM, {reports.FIELD: data, reports.SIG_FIELD: "00" * 32})
    reports.send(runtime.redis, reports.started(run, "attacker"), secret="a-guessed-secret")
    ingest(runtime).step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "queued" and shown["metrics"] == {}, shown
    reasons = refused(runtime)
    assert sum("not signed" in r for r in reasons) == 1, reasons
    assert sum("bad signature" in r for r in reasons) == 2, reasons


def test_reports_are_bound_to_their_attempt_and_its_worker(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    run = queued(cli, git_repo)
    send = lambda report: reports.send(runtime.redis, report, secret=SECRET)  # noqa: E731
    # Nobody started it: a finished is refused, the run stays queued.
    send(reports.finished(run, "w2", "completed", exit_code=0))
    ingest(runtime).step()
    assert cli.json("task", "show", run)["status"] == "queued"
    # w1 starts attempt 0; w2 cannot start, release or finish it; attempt 1 does not exist.
    send(reports.started(run, "w1", 0))
    send(reports.started(run, "w2", 0))
    send(reports.released(run, "w2", "stopping", 0))
    send(reports.finished(run, "w2", "completed", exit_code=0, metrics={"acc": 0.999}))
    send(reports.finished(run, "w1", "completed", exit_code=0, attempt=1))
    ingest(runtime).step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "running" and shown["worker"] == "w1", shown
    reasons = refused(runtime)
    assert len(reasons) == 5, reasons
    assert "nobody started it" in reasons[0]
    assert sum("w2" in r and "bound to" in r and "w1" in r for r in reasons) == 3, reasons
    assert any("attempt 1, but the task is on attempt 0" in r for r in reasons), reasons
    # Its own worker's report is applied.
    send(reports.finished(run, "w1", "completed", exit_code=0, metrics={"acc": 0.9}))
    ingest(runtime).step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed" and shown["metrics"] == {"acc": 0.9}


def worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", *args],
        env=env or os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def test_a_worker_runs_only_payloads_signed_with_its_secret(
    cli: CLI, git_repo: Repo, runtime: Runtime, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"  # the job may write here (--sandbox-write): it did not run
    marks.mkdir()
    (git_repo.path / "train.py").write_text(
        f"import pathlib; pathlib.Path({str(marks / 'ran')!r}).write_text('ran')\n")
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "marker")
    run = queued(cli, git_repo)
    # The attacker replaces the job with the same payload, unsigned (it has no secret).
    adapter = QueueAdapter(runtime.redis)
    job = adapter.job(run)
    assert job is not None
    payload = dict(job.args[0])
    assert "signature" in payload  # what the CLI enqueued was signed
    adapter.remove(run)
    payload.pop("signature")
    adapter.enqueue(run, payload, queue="gpu", priority="normal", timeout_s=600)
    done = worker("--burst", "--sandbox-write", str(marks))
    assert done.wait(timeout=110) == 0
    assert not (marks / "ran").exists()
    result = QueueAdapter(runtime.redis).job(run).latest_result()  # type: ignore[union-attr]
    assert result is not None and "not signed" in result.exc_string, result
    assert cli.json("task", "show", run)["status"] == "queued"


def test_signed_and_unsigned_never_mix(
    cli: CLI, git_repo: Repo, runtime: Runtime, tmp_path: Path
) -> None:
    """Once a secret exists, a party without it refuses what was signed with it rather than
    run it unchecked: a scheduler left without the secret, a worker started without it."""
    marks = tmp_path / "marks"  # the job may write here (--sandbox-write): it did not run
    marks.mkdir()
    (git_repo.path / "train.py").write_text(
        f"import pathlib; pathlib.Path({str(marks / 'ran')!r}).write_text('ran')\n")
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "marker")
    run = queued(cli, git_repo)  # signed by the CLI, which has the secret
    reports.send(runtime.redis, reports.started(run, "w1"), secret=SECRET)
    Ingest(runtime.redis, runtime.tasks, runtime.models, "scheduler", secret=None).step()
    assert cli.json("task", "show", run)["status"] == "queued"
    assert any("this scheduler has no worker secret" in r for r in refused(runtime))

    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_WORKER_SECRET"}
    done = worker("--burst", "--sandbox-write", str(marks), env=env)
    assert done.wait(timeout=110) == 0
    assert not (marks / "ran").exists()
    result = QueueAdapter(runtime.redis).job(run).latest_result()  # type: ignore[union-attr]
    assert result is not None and "this worker has no worker secret" in result.exc_string


FROZEN = """\
import json, os, pathlib, sys, time
attempt = os.environ["RETRAIN_ATTEMPT"]
pathlib.Path(sys.argv[1], "attempt-" + attempt).write_text(str(os.getpid()))
if attempt == "0":
    time.sleep(300)
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "metrics.json").write_text(json.dumps({"attempt": int(attempt)}))
"""


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    return False


def wait_for(what: str, predicate: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_worker_back_from_the_dead_cannot_overwrite_the_attempt_that_replaced_it(
    cli: CLI, git_repo: Repo, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAIN_HEARTBEAT_TTL_S", "6")
    marks = tmp_path / "marks"
    marks.mkdir()
    (git_repo.path / "train.py").write_text(FROZEN)
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "frozen")
    run = queued(cli, git_repo, "--retries", "1", "--abort-grace", "2s", "--args", str(marks))
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = Scheduler(Runtime(), triggers, wakeup=False)
    first = worker("--name", "first", "--sandbox-write", str(marks))
    frozen: list[int] = []
    try:
        wait_for("attempt 0 to run", (marks / "attempt-0").exists)
        job0 = int((marks / "attempt-0").read_text())
        scheduler.ingest.step()
        assert cli.json("task", "show", run)["status"] == "running"
        # Freeze the worker and its work horse (the heartbeat thread lives there).
        frozen = [first.pid, *children(first.pid)]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        wait_for("the heartbeat to expire",
                 lambda: not runtime.redis.exists(keys.heartbeat_key(run)), timeout=60)
        time.sleep(6)  # and for the run to be older than the TTL
        scheduler.reconcile(force=True)  # the lost-worker check: attempt 1 is queued
        shown = cli.json("task", "show", run)
        assert shown["status"] == "queued" and shown["attempt"] == 1, shown
        second = worker("--name", "second", "--burst", "--sandbox-write", str(marks))
        assert second.wait(timeout=110) == 0
        scheduler.ingest.step()
        shown = cli.json("task", "show", run)
        assert shown["status"] == "completed" and shown["metrics"] == {"attempt": 1}, shown
        assert shown["worker"].startswith("second")

        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        wait_for("the first worker to stop its stale job", lambda: not alive(job0), timeout=60)
        time.sleep(2)  # anything the first worker still sends has been sent
        scheduler.ingest.step()
        again = cli.json("task", "show", run)
        assert again["status"] == "completed" and again["metrics"] == {"attempt": 1}
        assert again["worker"] == shown["worker"] and again["attempt"] == 1
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=60)
        if (marks / "attempt-0").exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int((marks / "attempt-0").read_text()), signal.SIGKILL)
        scheduler.runtime.close()


def test_reports_of_an_earlier_execution_are_refused_after_a_release(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    """Attacker pass, second round (Redis access only): w1 started the run, then stopped and
    released it (the run went back to its queue, same attempt). A byte-identical copy of w1's
    signed `started`, replayed, bound the run again to w1, which was gone: the worker that
    really ran it next had every report refused and its result discarded; a replayed
    `released` re-queued it at will. Each execution of an attempt has its own id, in the
    signed payload and in every report: an earlier execution's reports are refused."""
    run = queued(cli, git_repo)
    adapter = QueueAdapter(runtime.redis, secret=SECRET)
    first = adapter.job(run)
    assert first is not None
    execution = first.args[0].get("execution")
    send = lambda report: reports.send(runtime.redis, report, secret=SECRET)  # noqa: E731

    def report(kind: str, worker: str, payload_execution: object) -> dict[str, object]:
        made = {
            "started": lambda: reports.started(run, worker, 0),
            "released": lambda: reports.released(run, worker, "stopping", 0),
            "finished": lambda: reports.finished(run, worker, "completed", exit_code=0,
                                                 metrics={"acc": 0.5}),
        }[kind]()
        if payload_execution is not None:
            made["execution"] = payload_execution
        return made

    old_started = report("started", "w1", execution)
    old_released = report("released", "w1", execution)
    send(old_started)
    send(old_released)
    ingest(runtime).step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "queued" and shown["worker"] is None, shown
    second = adapter.job(run)
    assert second is not None
    now = second.args[0].get("execution")
    assert now and now != execution, (execution, now)
    # The replay: the same signed bytes again, then the worker that really runs it now.
    send(old_started)
    send(old_released)
    send(report("started", "w2", now))
    send(report("finished", "w2", now))
    ingest(runtime).step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed" and shown["worker"] == "w2", shown
    assert shown["metrics"] == {"acc": 0.5}
    replayed = [r for r in refused(runtime) if "earlier execution" in r]
    assert len(replayed) == 2, refused(runtime)


def test_redis_access_cannot_hide_refused_reports_from_status(
    cli: CLI, git_repo: Repo, runtime: Runtime, tmp_path: Path
) -> None:
    """Attacker pass, second round: `DEL retrain:reports:dead` made `retrain status` say no
    report was ever refused. The leading scheduler counts refusals in the store (with the
    last reason), where Redis access cannot reach; the dead-letter stream stays for reading
    the refused entries themselves."""
    run = queued(cli, git_repo)
    forged = reports.finished(run, "attacker", "completed", exit_code=0)
    runtime.redis.xadd(keys.REPORTS_STREAM, {reports.FIELD: json.dumps(forged)})  # unsigned
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    scheduler = Scheduler(Runtime(), triggers, wakeup=False)
    scheduler.ingest.step()
    scheduler.heartbeat()
    runtime.redis.delete(keys.REPORTS_DEAD)  # the attacker's clean-up
    shown = cli.json("status")["reports"]
    assert shown["refused"] == 1, shown
    assert "not signed" in shown["last_refused"]["reason"], shown
    scheduler.heartbeat()  # counted once, not at every heartbeat
    assert cli.json("status")["reports"]["refused"] == 1


def test_a_replayed_run_cannot_register_models_on_a_finished_run(
    cli: CLI, git_repo: Repo, runtime: Runtime
) -> None:
    """Attacker pass, third round (Redis access only): the saved job hash of a completed run,
    pushed back on its queue, ran again on the same worker, and its second `finished` (same
    worker, same execution) registered a second model version on the completed run, firing
    model triggers again. A run's final report is applied once: a second is refused."""
    run = queued(cli, git_repo)
    execution = QueueAdapter(runtime.redis, secret=SECRET).job(run).args[0]["execution"]

    def signed(report: dict[str, object]) -> None:
        reports.send(runtime.redis, {**report, "execution": execution}, secret=SECRET)

    model = {"name": "detector", "uri": "s3://bucket/models/first.pt", "metadata": {}}
    signed(reports.started(run, "w1", 0))
    signed(reports.finished(run, "w1", "completed", exit_code=0, duration_s=5.0,
                            models=[model]))
    ingest(runtime).step()
    assert [m.uri for m in runtime.models.list()] == [model["uri"]]
    replayed = {**model, "uri": "s3://bucket/models/second.pt"}
    signed(reports.started(run, "w1", 0))
    signed(reports.finished(run, "w1", "completed", exit_code=0, duration_s=6.0,
                            models=[replayed], metrics={"acc": 0.1}))
    ingest(runtime).step()
    assert [m.uri for m in runtime.models.list()] == [model["uri"]]
    shown = cli.json("task", "show", run)
    assert shown["duration_s"] == 5.0 and shown["metrics"] == {}, shown
    assert any("already ended" in r for r in refused(runtime)), refused(runtime)
