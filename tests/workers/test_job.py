"""The whole loop through a real worker: a queued run is taken by `retrain worker` (a forking
RQ worker in its own process), checked out, given an environment and its input data, run,
and reported; the scheduler's ingest applies the report, and the model it produced fires a
model trigger."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from orchestrator.queue import keys
from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from orchestrator.scheduler.ingest import Ingest
from tests.conftest import CLI
from tests.datasets.conftest import write_tree
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, machine_redis_url, run_git

git_repo = task_fixtures.git_repo

TRAIN = """\
import json, os, pathlib, sys
params = json.loads(pathlib.Path(os.environ["RETRAIN_PARAMS_FILE"]).read_text())
data = pathlib.Path(os.environ["RETRAIN_INPUT_DATA"])
rows = (data / "rows.csv").read_text().splitlines()
print("training on", len(rows), "rows with", params["General/dataset_id"], "args", sys.argv[1:])
print("devices", repr(os.environ.get("CUDA_VISIBLE_DEVICES")))
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "metrics.json").write_text(json.dumps({"val/accuracy": 0.93, "rows": len(rows)}))
(out / "models" / "classifier.txt").write_text("weights")
"""

TRIGGERS = """\
version: 1
triggers:
  - name: evaluate-new-models
    on: {model: {project: dataset_blogpost, event: registered}}
    run:
      template: dataset_blogpost/evaluate
      overrides: {General/model_uri: "${model.uri}"}
    # Evaluation runs could register models in this project too: a possible loop, allowed.
    allow_cycles: true
"""


@pytest.fixture
def loop(cli: CLI, git_repo: Repo, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    # Slow jobs write their grandchild's pid here: the only folder outside their own that
    # the sandbox lets them write (workers read --sandbox-write from the environment).
    (tmp_path / "marks").mkdir()
    monkeypatch.setenv("RETRAIN_SANDBOX_WRITE", str(tmp_path / "marks"))
    (git_repo.path / "train.py").write_text(TRAIN)
    run_git(git_repo.path, "commit", "-qam", "train for real")
    data = write_tree(tmp_path / "batch", {"rows.csv": "t,h,occupied\n1,2,0\n3,4,1\n"})
    version = cli("dataset", "create", "--project", "dataset_blogpost", "--name", "occ").out
    cli("dataset", "add", "--id", version.strip(), "--files", str(data))
    cli("dataset", "finalize", "--id", version.strip())
    cli("task", "create", "--project", "dataset_blogpost", "--name", "training", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "gpu",
        "--param", "General/dataset_id=", "--input", "data=${params.General/dataset_id}",
        "--args", "--rows-from ${inputs.data}")
    cli("task", "create", "--project", "dataset_blogpost", "--name", "evaluate", "--repo",
        str(git_repo.path), "--module", "pkg.evaluate", "--queue", "cpu",
        "--param", "General/model_uri=")
    yield url, version.strip()
    client.flushdb()
    client.close()


def worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()",
                           "worker", *args], env=os.environ.copy(), capture_output=True,
                          text=True, timeout=110, check=False)


def test_a_run_goes_through_a_worker_and_its_model_fires_a_trigger(
    cli: CLI, loop: tuple[str, str], tmp_path: Path
) -> None:
    url, version = loop
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(TRIGGERS)
    runtime = Runtime()
    scheduler = Scheduler(runtime, triggers, reconcile_every=600)
    assert scheduler.reload(force=True)
    scheduler.tick()

    run = cli("task", "run", "dataset_blogpost/training",
              "--param", f"General/dataset_id={version}").out.strip()
    done = worker("--queue", "gpu", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr

    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed", shown["error"]
    assert shown["exit_code"] == 0 and shown["metrics"] == {"val/accuracy": 0.93, "rows": 3.0}
    environment = shown["environment"]
    assert environment["tool"] == "uv" and len(environment["key"]) == 24
    assert environment["hit"] is False and isinstance(environment["frozen"], list)
    [model] = cli.json("model", "list", "--project", "dataset_blogpost")
    assert model["task_id"] == run and model["name"] == "classifier"

    # The log went to Redis line by line, args rendered with the input's local path.
    client = redis.Redis.from_url(url)
    lines = [e[1][b"line"].decode() for e in client.xrange(keys.logs_stream(run))]
    client.close()
    assert any(line.startswith(f"training on 3 rows with {version} args ['--rows-from', '/")
               for line in lines), lines
    assert "devices ''" in lines

    # A second run with the same pins reuses the environment instead of rebuilding it.
    again = cli("task", "run", "dataset_blogpost/training",
                "--param", f"General/dataset_id={version}").out.strip()
    assert worker("--queue", "gpu", "--gpus", "none", "--burst").returncode == 0
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    second = cli.json("task", "show", again)["environment"]
    assert second["hit"] is True and second["key"] == environment["key"]

    # The model registration is an event; the scheduler fires the model trigger on it.
    # One evaluation per registered model (the second waits behind the first: max_concurrent 1).
    assert scheduler.tick().fired == 1
    evaluations = cli.json("task", "list", "--project", "dataset_blogpost", "--status",
                           "queued")
    assert [t["trigger"] for t in evaluations] == ["evaluate-new-models"] * 2
    runtime.close()


def test_a_broken_step_fails_the_task_naming_the_step(cli: CLI, loop: tuple[str, str]) -> None:
    url, version = loop
    run = cli("task", "run", "dataset_blogpost/training",
              "--param", f"General/dataset_id={version}").out.strip()
    # Make the recorded commit unreachable: the checkout step must fail, cleanly.
    runtime = Runtime()
    with runtime.store.session() as session:
        from orchestrator.store.models import Task

        task = session.get(Task, run)
        assert task is not None
        payload_spec = dict(task.spec)
    client = redis.Redis.from_url(url)
    job = client.hgetall(f"rq:job:{run}")
    assert job
    import zlib

    data = json.loads(zlib.decompress(job[b"data"]))
    data[2][0]["spec"] = {**payload_spec, "commit": "0" * 40}
    client.hset(f"rq:job:{run}", "data", zlib.compress(json.dumps(data).encode()))
    client.close()

    done = worker("--queue", "gpu", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "failed"
    assert shown["error"].startswith("checkout failed: commit 0000000000"), shown["error"]
    assert not (runtime.settings.resolved_cache_dir / "work" / run).exists()
    runtime.close()



def test_a_process_that_cannot_start_fails_the_task_and_leaves_no_folder(
    cli: CLI, loop: tuple[str, str]
) -> None:
    """Attacker pass, worker.secret round: a run whose process could not be started (its
    working folder gone at the commit it froze, its interpreter not executable) raised out of
    run_task: no `finished` report (the run stayed running until its heartbeat lapsed) and its
    execution folder stayed on disk. It fails, naming the step, and its folder goes."""
    url, version = loop
    run = cli("task", "run", "dataset_blogpost/training",
              "--param", f"General/dataset_id={version}").out.strip()
    client = redis.Redis.from_url(url)
    job = client.hgetall(f"rq:job:{run}")
    import zlib

    data = json.loads(zlib.decompress(job[b"data"]))
    data[2][0]["spec"] = {**data[2][0]["spec"], "working_dir": "gone"}
    client.hset(f"rq:job:{run}", "data", zlib.compress(json.dumps(data).encode()))
    client.close()

    done = worker("--queue", "gpu", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr
    runtime = Runtime()
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "failed", shown["status"]
    assert shown["error"].startswith("process failed: "), shown["error"]
    work = runtime.settings.resolved_cache_dir / "work"
    assert not [p for p in work.rglob(f"{run}.*")], list(work.rglob("*"))
    runtime.close()

@pytest.mark.parametrize("count", [2, 4])
def test_one_job_per_gpu_each_pinned_to_its_own_device(
    cli: CLI, loop: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    count: int,
) -> None:
    url, version = loop
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    rows = "\\n".join(f"{i}, GPU-{i:08d}-fake, NVIDIA H200, 143771" for i in range(count))
    fake.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a private place for this test's GPU locks
    runs = [cli("task", "run", "dataset_blogpost/training",
                "--param", f"General/dataset_id={version}").out.strip() for _ in range(count)]

    done = worker("--queue", "gpu", "--gpus", "all", "--per-job", "1", "--burst",
                  "--max-jobs", "1")
    assert done.returncode == 0, done.stderr

    client = redis.Redis.from_url(url)
    seen = []
    for run in runs:
        lines = [e[1][b"line"].decode() for e in client.xrange(keys.logs_stream(run))]
        seen += [line for line in lines if line.startswith("devices")]
    client.close()
    assert sorted(seen) == sorted(f"devices 'GPU-{i:08d}-fake'" for i in range(count))


SLOW = """\
import os, pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import os, pathlib, time; pathlib.Path(os.environ['PIDFILE']).write_text(str(os.getpid())); "
    "time.sleep(600)"])
print("started", flush=True)
time.sleep(float(os.environ["SLEEP_S"]))
child.kill()
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "notes.txt").write_text("slept well")
"""


def _slow_template(cli: CLI, git_repo: Repo, timeout: str, *options: str,
                   sleep_s: float = 600) -> str:
    (git_repo.path / "slow.py").write_text(SLOW)
    run_git(git_repo.path, "add", "slow.py")
    run_git(git_repo.path, "commit", "-qm", "a slow job")
    return cli("task", "create", "--project", "dataset_blogpost", "--name", "slow", "--repo",
               str(git_repo.path), "--script", "slow.py", "--queue", "slow", "--timeout",
               timeout, "--env", f"PIDFILE={git_repo.path.parent / 'marks' / 'grandchild.pid'}",
               "--env", f"SLEEP_S={sleep_s}", *options).out.strip()


def _start_worker(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "from orchestrator.cli import main; main()",
                             "worker", *args], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat_file = Path(f"/proc/{pid}/stat")  # a zombie nobody reaped is gone too
    return stat_file.exists() and stat_file.read_text().split()[2] == "Z"


def test_abort_stops_the_whole_process_tree(
    cli: CLI, loop: tuple[str, str], git_repo: Repo
) -> None:
    from tests.triggers.conftest import wait_for

    url, _ = loop
    _slow_template(cli, git_repo, "1h")
    run = cli("task", "run", "dataset_blogpost/slow").out.strip()
    proc = subprocess.Popen([sys.executable, "-c", "from orchestrator.cli import main; main()",
                             "worker", "--queue", "slow", "--gpus", "none", "--burst"],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pidfile = git_repo.path.parent / "marks" / "grandchild.pid"
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), "the job's grandchild")
        grandchild = int(pidfile.read_text())
        assert cli.json("task", "abort", run)["status"] == "aborted"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: _gone(grandchild), "the grandchild to be killed", timeout=30)
    runtime = Runtime()
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "aborted"
    # The worker's final report still lands on the record: duration, environment, the log.
    assert shown["error"] == "aborted by user" and shown["duration_s"] > 0
    assert len(shown["environment"]["key"]) == 24
    assert [a["path"] for a in shown["artifacts"]] == ["output.log"]
    client = redis.Redis.from_url(url)
    client.delete(keys.logs_stream(run))  # the live log expired
    client.close()
    assert "started" in cli("logs", run).out.splitlines()
    runtime.close()


def test_a_timeout_fails_the_task_with_the_reason(
    cli: CLI, loop: tuple[str, str], git_repo: Repo
) -> None:
    url, _ = loop
    _slow_template(cli, git_repo, "2s")
    run = cli("task", "run", "dataset_blogpost/slow").out.strip()
    done = worker("--queue", "slow", "--gpus", "none", "--burst")
    assert done.returncode == 0, done.stderr
    runtime = Runtime()
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "failed"
    assert shown["error"] == "timeout after 2 s", shown["error"]
    assert _gone(int((git_repo.path.parent / "marks" / "grandchild.pid").read_text()))
    runtime.close()


def test_a_broken_requirement_fails_in_the_environment_step(
    cli: CLI, loop: tuple[str, str], git_repo: Repo, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = loop
    (tmp_path / "reqs.txt").write_text("no-such-package-for-retrain==9.9.9\n")
    cli("task", "create", "--project", "dataset_blogpost", "--name", "broken", "--repo",
        str(git_repo.path), "--script", "train.py", "--queue", "cpu",
        "--requirements", str(tmp_path / "reqs.txt"))
    run = cli("task", "run", "dataset_blogpost/broken").out.strip()
    monkeypatch.setenv("UV_OFFLINE", "1")  # no package index needed to fail
    assert worker("--queue", "cpu", "--gpus", "none", "--burst").returncode == 0
    runtime = Runtime()
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    shown = cli.json("task", "show", run)
    assert shown["status"] == "failed"
    assert shown["error"].startswith("environment: environment failed:") or \
        "installing requirements" in shown["error"], shown["error"]
    envs = runtime.settings.resolved_cache_dir / "envs"
    assert not [p for p in envs.iterdir() if not p.name.endswith(".lock")], "half-built env"
    runtime.close()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process, its group, and every descendant's group (RQ's work horse and the
    user's job each run in a session of their own): what a dying host does."""
    import contextlib
    import signal

    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    for member in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(member), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.parametrize("case", ["healthy", "killed", "killed-with-a-retry"])
def test_a_dead_worker_settles_its_run_and_a_live_one_never_does(
    cli: CLI, loop: tuple[str, str], git_repo: Repo, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, case: str,
) -> None:
    """With a 5 s heartbeat TTL: a job running well past it is never declared lost while its
    worker lives, and finishes `completed`; SIGKILL of the worker and its job (a dead host)
    fails the run, or puts it back on its queue while it has retries left."""
    from orchestrator.scheduler.daemon import Scheduler
    from tests.triggers.conftest import wait_for

    healthy = case == "healthy"
    monkeypatch.setenv("RETRAIN_HEARTBEAT_TTL_S", "5")
    retries = ("--retries", "1") if case == "killed-with-a-retry" else ()
    _slow_template(cli, git_repo, "1h", *retries, sleep_s=9 if healthy else 600)
    run = cli("task", "run", "dataset_blogpost/slow").out.strip()
    proc = _start_worker("--queue", "slow", "--gpus", "none", "--burst")
    triggers = tmp_path / "none.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    runtime = Runtime()
    scheduler = Scheduler(runtime, triggers)
    pidfile = git_repo.path.parent / "marks" / "grandchild.pid"
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), "the job to start")
        scheduler.ingest.step()
        assert cli.json("task", "show", run)["status"] == "running"
        if not healthy:
            _kill_tree(proc.pid)  # the worker, its work horse and the job, all at once
            proc.wait()
        # Past the TTL: only a worker that stopped beating is lost.
        time.sleep(6.5)
        scheduler.ingest.step()
        scheduler.reconcile(force=True)
        shown = cli.json("task", "show", run)
        if healthy:
            assert shown["status"] == "running"
            assert proc.wait(60) == 0  # the job ends by itself, 9 s in
            scheduler.ingest.step()
            scheduler.reconcile(force=True)
            shown = cli.json("task", "show", run)
            assert shown["status"] == "completed", shown["error"]
            assert shown["duration_s"] >= 9
            assert [a["path"] for a in shown["artifacts"]] == ["notes.txt", "output.log"]
            assert all(a["uri"].startswith("file://") for a in shown["artifacts"])
        elif retries:
            assert shown["status"] == "queued" and shown["attempt"] == 1
            assert shown["error"].startswith("worker lost") and "retry 1 of 1" in shown["error"]
            job = runtime.queues.job(run)
            assert job is not None and job.get_status().value == "queued"
            # Text for people too.
            assert "1 of 1 used" in cli("task", "show", run).out
        else:
            assert shown["status"] == "failed" and shown["attempt"] == 0
            assert shown["error"].startswith("worker lost"), shown["error"]
    finally:
        if proc.poll() is None:
            cli("task", "abort", run, expect=0)
            proc.wait(60)
        runtime.close()


def _fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir(exist_ok=True)
    rows = "\\n".join(f"{i}, GPU-{i:08d}-fake, NVIDIA H200, 143771" for i in range(count))
    fake.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a private place for this test's GPU locks


@pytest.mark.parametrize("stop", ["warm", "twice", "abort-on-stop"])
def test_stopping_a_worker_finishes_or_hands_back_its_job(
    cli: CLI, loop: tuple[str, str], git_repo: Repo, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, stop: str,
) -> None:
    """SIGTERM: the worker finishes its job, then exits. A second SIGTERM, or the first with
    --abort-on-stop: the job's process tree is stopped and the task goes back to its queue.
    Meanwhile the worker advertises itself (host, GPUs, queues, state, task) for `status`."""
    import signal

    from tests.triggers.conftest import wait_for

    url, _ = loop
    _fake_gpus(tmp_path, monkeypatch, 2)
    _slow_template(cli, git_repo, "1h", "--abort-grace", "5s",
                   sleep_s=4 if stop == "warm" else 600)
    run = cli("task", "run", "dataset_blogpost/slow").out.strip()
    flags = ["--abort-on-stop"] if stop == "abort-on-stop" else []
    proc = _start_worker("--queue", "slow", "--gpus", "1", "--name", "w", *flags)
    client = redis.Redis.from_url(url, decode_responses=True)
    pidfile = git_repo.path.parent / "marks" / "grandchild.pid"
    runtime = Runtime()
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), "the job to start")
        grandchild = int(pidfile.read_text())
        advert = client.hgetall(keys.worker_key("w-gpu1"))
        assert advert["state"] == "busy" and advert["task"] == run, advert
        assert json.loads(advert["queues"]) == ["slow"]
        assert [g["index"] for g in json.loads(advert["gpus"])] == [1]
        assert json.loads(advert["gpus"])[0]["memory_mib"] == 143771
        assert client.zscore(keys.WORKERS, "w-gpu1") is not None
        assert "worker healthy: w-gpu1" in cli("health", "worker").out

        proc.send_signal(signal.SIGTERM)
        if stop == "twice":
            time.sleep(1.5)  # a repeat within a second counts as the same request
            assert proc.poll() is None, "one SIGTERM must not stop a busy worker"
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_for(lambda: _gone(grandchild), "the job's grandchild to stop", timeout=10)
        assert not client.exists(keys.worker_key("w-gpu1"))
        assert client.zscore(keys.WORKERS, "w-gpu1") is None
        assert "no running worker" in cli("health", "worker", expect=1).err

        Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
        shown = cli.json("task", "show", run)
        if stop == "warm":
            assert shown["status"] == "completed", shown["error"]
        else:
            assert shown["status"] == "queued" and shown["attempt"] == 0, shown
            assert shown["error"] == "re-queued: worker w-gpu1 was stopped"
            job = runtime.queues.job(run)
            assert job is not None and job.get_status().value == "queued"
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.wait()
        client.close()
        runtime.close()


def test_logs_follow_a_running_task_then_come_from_storage(
    cli: CLI, loop: tuple[str, str], git_repo: Repo
) -> None:
    url, _ = loop
    template = _slow_template(cli, git_repo, "1h", sleep_s=2)
    run = cli("task", "run", "dataset_blogpost/slow").out.strip()
    assert "no output yet" in cli("logs", run).err
    proc = _start_worker("--queue", "slow", "--gpus", "none", "--burst")
    # The scheduler's part, applying the worker's reports: how the run ended is the store's
    # to say (a live log's `end` entry only makes the follower ask it).
    stop = threading.Event()

    def ingest_until_stopped() -> None:
        rt, client = Runtime(), redis.Redis.from_url(url)
        try:
            while not stop.wait(0.5):
                Ingest(client, rt.tasks, rt.models, "test").step()
        finally:
            rt.close()
            client.close()

    ingester = threading.Thread(target=ingest_until_stopped)
    ingester.start()
    try:
        followed = cli("logs", run, "-f")  # returns when the store says the run ended
        assert followed.out == "started\n"
        assert followed.err == f"retrain: task {run} ended: completed\n"
        assert proc.wait(60) == 0
    finally:
        stop.set()
        ingester.join(60)
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.wait()
    runtime = Runtime()
    Ingest(redis.Redis.from_url(url), runtime.tasks, runtime.models, "test").step()
    redis.Redis.from_url(url).delete(keys.logs_stream(run))  # the stored log remains
    assert cli("logs", run).out == "started\n"
    assert cli("logs", run, "--tail", "1").out == "started\n"
    assert "is a template" in cli("logs", template, expect=2).err
    runtime.close()
