"""Template tasks through the real CLI, real git, real Redis, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from orchestrator.queue.adapter import JOB_TIMEOUT_MARGIN_S
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.events import read_events
from orchestrator.store.models import Event, Task
from tests.conftest import CLI
from tests.datasets.conftest import write_tree
from tests.datasets.test_errors import closed_port
from tests.tasks.conftest import Repo, machine_redis_url, queue_list, raw_jobs, run_git


@pytest.fixture
def env(database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    return redis_url


@pytest.fixture
def machine_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The machine's Redis alone, for tests that check nothing reaches it."""
    url = machine_redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    yield url
    client.flushdb()
    client.close()


def dataset_version(cli: CLI, tmp_path: Path, name: str = "occupancy") -> str:
    data = write_tree(tmp_path / f"data-{name}", {"rows.csv": "t,h,occupied\n1,2,0\n"})
    version = cli("dataset", "create", "--project", "dataset_blogpost", "--name", name).out
    cli("dataset", "add", "--id", version.strip(), "--files", str(data))
    cli("dataset", "finalize", "--id", version.strip())
    return version.strip()


def job_data(hash_: dict[bytes, bytes]) -> Any:
    """An RQ job's `data` field: zlib over the serializer's bytes, here JSON (never pickle)."""
    return json.loads(zlib.decompress(hash_[b"data"]))


def test_captured_template_cloned_with_dataset_id_and_queued(
    cli: CLI, env: str, git_repo: Repo, tmp_path: Path
) -> None:
    # A dirty checkout: a tracked change and an untracked file.
    (git_repo.path / "train.py").write_text("print('training, tuned')\n")
    (git_repo.path / "notes.md").write_text("try a lower learning rate\n")
    template = cli("task", "capture", str(git_repo.path), "--project", "dataset_blogpost",
                   "--name", "training", "--script", "train.py", "--queue", "gpu",
                   "--param", "General/dataset_id=", "Args/epochs=10", "Args/lr=0.01",
                   "--input", "data=${params.General/dataset_id}",
                   "--args", "--epochs ${params.Args/epochs} --data ${inputs.data}",
                   "--tags", "template").out.strip()
    version = dataset_version(cli, tmp_path)

    run = cli("task", "run", "dataset_blogpost/training@template",
              "--param", f"General/dataset_id={version}", "Args/epochs=3",
              "--param", "General/note=retrain on ${params.General/dataset_id} $${literal}",
              "--allow-new-params", "--priority", "high").out.strip()

    shown = cli.json("task", "show", run)
    spec = shown["spec"]
    assert shown["status"] == "queued" and shown["parent"] == template
    assert spec["commit"] == git_repo.head and spec["repo"] == str(git_repo.path)
    assert "+print('training, tuned')" in spec["diff"] and "+try a lower" in spec["diff"]
    assert spec["requirements"] == ["numpy==1.26.4", "six==1.16.0"]
    assert shown["parameters"] == {
        "General/dataset_id": version, "Args/epochs": 3, "Args/lr": 0.01,
        "General/note": f"retrain on {version} ${{literal}}"}
    assert shown["resolved_inputs"]["data"]["version_id"] == version
    assert shown["resolved_inputs"]["data"]["manifest_sha256"]

    # The job in Redis: JSON, the task's payload, an explicit timeout, on the high queue.
    raw = raw_jobs(env)[run]
    func_name, _instance, args, kwargs = job_data(raw)
    assert func_name == "workers.job.run_task" and kwargs == {}
    assert args[0]["task_id"] == run and args[0]["spec"]["commit"] == git_repo.head
    assert args[0]["parameters"]["General/dataset_id"] == version
    assert spec["timeout_s"] == 24 * 3600  # RQ gets it plus a margin: the job acts first
    assert int(raw[b"timeout"]) == spec["timeout_s"] + JOB_TIMEOUT_MARGIN_S
    assert queue_list(env, "gpu:high") == [run]

    # Events: created (template), created + queued (run), in order.
    store = Store(Settings.load().database_url)
    with store.reader() as session:
        kinds = [(e.kind, e.entity_id) for e in read_events(session, 0)
                 if e.kind.startswith("task.")]
    store.dispose()
    assert kinds == [("task.created", template), ("task.created", run), ("task.queued", run)]


def test_template_references(cli: CLI, git_repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    def register(*extra: str) -> str:
        return cli("task", "create", "--project", "team/vision", "--name", "train",
                   "--repo", str(git_repo.path), "--script", "train.py", *extra).out.strip()

    old = register("--commit", git_repo.first[:10], "--tags", "stable")
    new = register("--branch", "feature")
    assert cli.json("task", "show", "team/vision/train")["id"] == new
    assert cli.json("task", "show", "team/vision/train@stable")["id"] == old
    assert cli.json("task", "show", old)["spec"]["commit"] == git_repo.first  # recorded in full
    assert cli.json("task", "show", new)["spec"]["commit"] is None  # resolved when queued
    # A clone is a run, never a template: the names still resolve to the registrations, and
    # the run takes none of the template's tags.
    clone = cli("task", "clone", "team/vision/train@stable", "--name", "train").out.strip()
    assert cli.json("task", "show", "team/vision/train")["id"] == new
    shown = cli.json("task", "show", clone)
    assert (shown["parent"], shown["template"], shown["tags"]) == (old, old, [])
    listed = cli.json("task", "list", "--templates", "--project", "team/*", "--tag", "stable")
    assert [t["id"] for t in listed] == [old]
    runs = cli.json("task", "list", "--project", "team/*")
    assert [t["id"] for t in runs] == [clone]
    # One way of writing a time in every command's JSON (the new-user pass saw task list
    # write +00:00 where task show wrote Z for the same run).
    assert runs[0]["created_at"] == shown["created_at"] and shown["created_at"].endswith("Z")
    template = cli.json("task", "show", "team/vision/train@stable")
    assert template["runs"][0]["created_at"] == shown["created_at"], template["runs"]


def test_branch_resolves_to_a_commit_when_queued(
    cli: CLI, env: str, git_repo: Repo
) -> None:
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo",
                   str(git_repo.path), "--branch", "feature", "--script", "feature.py").out
    run_git(git_repo.path, "checkout", "-q", "feature")
    (git_repo.path / "later.txt").write_text("x")
    run_git(git_repo.path, "add", "-A")
    run_git(git_repo.path, "commit", "-qm", "later")
    later = run_git(git_repo.path, "rev-parse", "HEAD")
    run = cli("task", "run", template.strip()).out.strip()
    assert cli.json("task", "show", run)["spec"]["commit"] == later
    assert cli.json("task", "show", template.strip())["spec"]["commit"] is None


def task_state(url: str | None = None) -> tuple[object, ...]:
    store = Store(Settings.load().database_url)
    with store.reader() as session:
        tasks = session.scalar(select(func.count()).select_from(Task))
        events = session.scalar(select(func.count()).select_from(Event))
    store.dispose()
    return tasks, events, sorted(raw_jobs(url)) if url else None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["task", "run", "p/missing"], "no template 'p/missing'"),
        (["task", "run", "p/t", "--param", "General/typo=1"], "has no such parameter"),
        (["task", "run", "p/t", "--param", "Args/epochs=ten"], "expects an integer"),
        (["task", "run", "p/t", "--param", "Args/flag=maybe"], "expects true or false"),
        (["task", "run", "p/t", "--param", "nosection=1"], "Section/name"),
        (["task", "run", "p/t", "--param", "General/note=${dataset.id}"],
         "unknown variable ${dataset.id}"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "missing.py"], "script missing.py is not in"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--branch", "nope", "--script", "train.py"], "--branch: 'nope' does not exist"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--requirements", "LOOSE"], "loose.txt:2: 'pandas>=2' is not"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--env", "WANDB_API_KEY=abc"], "looks like a credential"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--env", "X=ghp_abcdefghijklmnopqrstuvwxyz123456"],
         "holds a credential"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--args", "--data ${inputs.nothing}"],
         "unknown variable ${inputs.nothing}"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--input", "d=0123456789abcdef0123456789abcdef"],
         "no dataset version"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--timeout", "soon"], "--timeout"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--abort-grace", "2h"], "--abort-grace: at most 1h"),
        (["task", "create", "--project", "p", "--name", "x", "--repo", "REPO",
          "--script", "train.py", "--retries", "11"], "--retries"),
        (["task", "create", "-f", "YAML"], "task.yaml:5:1: gpus: Input should be a valid integer"),
        (["task", "enqueue", "0123456789abcdef0123456789abcdef"], "no task"),
        (["task", "show", "nonexistent"], "no task 'nonexistent'"),
        (["task", "show", "p/none"], "no template 'p/none'"),
        # Found by the new-user pass on issue 13: a traceback, and an empty tag accepted.
        (["task", "run", "p/t", "--queue", "bad queue"], "--queue: 'bad queue' is not a queue"),
        (["task", "clone", "p/t", "--queue", "bad queue"], "--queue: 'bad queue' is not a"),
        (["task", "run", "p/t@"], "an empty tag"),
        # An empty --queue or --name was taken as "not given": the run went to the template's
        # queue under its name, exit 0 (new-user pass "nu").
        (["task", "run", "p/t", "--queue", ""], "--queue: '' is not a queue name"),
        (["task", "clone", "p/t", "--queue", ""], "--queue: '' is not a queue name"),
        (["task", "run", "p/t", "--name", ""], "--name: '' is not a valid name"),
        (["task", "clone", "p/t", "--name", " "], "--name: ' ' is not a valid name"),
        (["task", "list", "--limit", "9" * 20], "Invalid value for '--limit'"),
        (["task", "capture", "REPO", "--project", "p", "--name", "c", "--script", "absent.py"],
         "script absent.py is not in"),
    ],
)
def test_bad_input_changes_nothing(
    cli: CLI, machine_redis: str, git_repo: Repo, tmp_path: Path, args: list[str], message: str
) -> None:
    cli("task", "create", "--project", "p", "--name", "t", "--repo", str(git_repo.path),
        "--script", "train.py", "--param", "Args/epochs=10", "Args/flag=true",
        "General/note=")
    (tmp_path / "loose.txt").write_text("numpy==1.26.4\npandas>=2\n")
    (tmp_path / "task.yaml").write_text(
        f"project: p\nname: y\nrepo: {git_repo.path}\n  \ngpus: lots\nscript: train.py\n")
    args = [a.replace("REPO", str(git_repo.path)).replace("LOOSE", str(tmp_path / "loose.txt"))
            .replace("YAML", str(tmp_path / "task.yaml")) for a in args]
    before = task_state(machine_redis)
    err = cli(*args, expect=2).err
    assert message in err, err
    assert task_state(machine_redis) == before


def test_task_yaml_is_the_same_task_declaratively(
    cli: CLI, git_repo: Repo, tmp_path: Path
) -> None:
    (tmp_path / "reqs.txt").write_text("six==1.16.0\n")
    (tmp_path / "task.yaml").write_text(f"""\
project: dataset_blogpost
name: evaluate
type: evaluation
repo: {git_repo.path}
commit: {git_repo.head}
module: pkg.evaluate
args: ["--model", "${{params.General/train_task}}"]
requirements: reqs.txt
params:
  General/train_task: ""
  Args/threshold: 0.9
queue: cpu
timeout: 30m
abort_grace: 2m
retries: 2
tags: [eval]
""")
    task_id = cli("task", "create", "-f", str(tmp_path / "task.yaml")).out.strip()
    shown = cli.json("task", "show", task_id)
    assert shown["type"] == "evaluation" and shown["queue"] == "cpu"
    assert shown["spec"]["entry"] == {"script": None, "module": "pkg.evaluate"}
    assert shown["spec"]["timeout_s"] == 1800 and shown["spec"]["requirements"] == [
        "six==1.16.0"]
    assert (shown["spec"]["abort_grace_s"], shown["spec"]["retries"]) == (120, 2)
    assert shown["parameters"] == {"General/train_task": "", "Args/threshold": 0.9}


def test_reconcile_enqueues_once_after_an_outage_and_after_a_flush(
    cli: CLI, env: str, git_repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo",
                   str(git_repo.path), "--script", "train.py", "--queue", "gpu").out.strip()
    # Redis unreachable between the commit and the enqueue: the task is queued in the store.
    monkeypatch.setenv("RETRAIN_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    result = cli("task", "run", template)
    run = result.out.strip()
    assert "queued in the store but Redis is unreachable" in result.err
    assert cli.json("task", "show", run)["status"] == "queued"
    if env.startswith("unix://"):
        monkeypatch.delenv("RETRAIN_REDIS_URL")
    else:
        monkeypatch.setenv("RETRAIN_REDIS_URL", env)
    assert run not in raw_jobs(env)

    assert cli.json("queue", "reconcile")["enqueued"] == [run]
    assert cli.json("queue", "reconcile")["enqueued"] == []
    assert queue_list(env, "gpu") == [run]

    # Redis loses everything: the store refills it, once, even with reconcilers racing.
    client = redis.Redis.from_url(env)
    client.flushdb()
    client.close()
    runtimes = [Runtime() for _ in range(4)]
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda rt=rt: results.append(rt.tasks.reconcile().enqueued))
               for rt in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for rt in runtimes:
        rt.close()
    assert sorted(task for found in results for task in found) == [run]
    assert queue_list(env, "gpu") == [run]
    payload = job_data(raw_jobs(env)[run])[2][0]
    assert payload["task_id"] == run and payload["spec"]["commit"] == git_repo.head


def test_abort_removes_the_waiting_job(cli: CLI, env: str, git_repo: Repo) -> None:
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo",
                   str(git_repo.path), "--script", "train.py").out.strip()
    run = cli("task", "run", template).out.strip()
    assert queue_list(env, "default") == [run]
    assert cli.json("task", "abort", run)["status"] == "aborted"
    assert queue_list(env, "default") == [] and run not in raw_jobs(env)
    err = cli("task", "enqueue", run, expect=2).err
    assert "aborted; it cannot become queued; clone it" in err


def test_run_many_queues_a_burst_in_one_transaction(
    cli: CLI, env: str, git_repo: Repo
) -> None:
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo",
                   str(git_repo.path), "--script", "train.py", "--queue", "burst",
                   "--param", "General/dataset_id=").out.strip()
    runtime = Runtime()
    made = runtime.tasks.run_many(template, [{"General/dataset_id": f"v{i}"} for i in range(3)])
    runtime.close()
    ids = [info.id for info, sent in made if sent]
    assert len(ids) == 3 and queue_list(env, "burst") == ids
    assert [cli.json("task", "show", i)["parameters"]["General/dataset_id"] for i in ids] == [
        "v0", "v1", "v2"]
    store = Store(Settings.load().database_url)
    with store.reader() as session:
        log = [(e.kind, e.entity_id) for e in read_events(session, 0) if e.entity_id in ids]
    store.dispose()
    assert log == [(kind, i) for i in ids for kind in ("task.created", "task.queued")]


def test_capture_accepts_an_untracked_entry_script(
    cli: CLI, machine_redis: str, git_repo: Repo
) -> None:
    """The untracked files are captured into the diff, so an entry script among them runs."""
    (git_repo.path / "experiment.py").write_text("print('new idea')\n")
    template = cli("task", "capture", str(git_repo.path), "--project", "p", "--name", "exp",
                   "--script", "experiment.py").out.strip()
    assert "+++ b/experiment.py" in cli.json("task", "show", template)["spec"]["diff"]
    run = cli.json("task", "run", template)
    assert run["status"] == "queued" and run["in_redis"]
