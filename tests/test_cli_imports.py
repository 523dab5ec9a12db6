"""Everyday commands stay fast: each runs, for real, in a fresh interpreter, and must not load a
package its list in `orchestrator/cli/imports.py` names; and the ending process skips the
final garbage collection without losing what the command wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator.cli.imports import HEAVY, NOT_NEEDED, NOT_ON_SQLITE
from tests.conftest import CLI

HARNESS = """
import gc, json, os, sys
from orchestrator.cli import main
try:
    main()
finally:
    with open(os.environ["RETRAIN_TEST_MODULES"], "w") as f:
        json.dump({"modules": sorted(sys.modules),
                   "frozen": gc.get_freeze_count()}, f)
"""


def run_command(
    args: list[str], cwd: Path, report: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    env = {**os.environ, "RETRAIN_TEST_MODULES": str(report)}
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"retrain {' '.join(args)}: {done.stderr}"
    return done, json.loads(report.read_text())


def _within(module: str, name: str) -> bool:
    """Whether `module` is the package or module `name`, or inside it."""
    return module == name or module.startswith(name + ".")


def make_repo(path: Path) -> None:
    path.mkdir()
    (path / "train.py").write_text("print('hi')\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for step in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run([*git, *step], cwd=path, check=True)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_everyday_commands_load_only_what_they_need(
    store: str,
    cli: CLI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    import redis

    from orchestrator.queue import keys
    from orchestrator.queue.connection import embedded_url
    from orchestrator.queue.wakeup import Listener
    from orchestrator.settings import Settings

    if store == "postgres":
        monkeypatch.setenv("RETRAIN_DATABASE_URL", request.getfixturevalue("postgres_url"))
    # The embedded Redis of this home: `task run` queues on it, and the others announce
    # their events on it (checked below).
    url = embedded_url(Settings.load(), start=True)
    assert url is not None
    make_repo(tmp_path / "repo")
    template = cli(
        "task", "create", "--project", "p", "--name", "train", "--repo", str(tmp_path / "repo"),
        "--script", "train.py", "--queue", "default",
    ).out.strip()
    (tmp_path / "batch.csv").write_text("a,b\n1,2\n")
    final = cli("dataset", "create", "--project", "p", "--name", "d").out.strip()
    cli("dataset", "add", "--files", "batch.csv")
    cli("dataset", "close")
    model = cli("model", "register", "--project", "p", "--name", "m", "--uri", "/srv/m").out.strip()

    client = redis.Redis.from_url(url)
    woken = threading.Event()
    listener = Listener(client, woken)
    listener.start()
    report = tmp_path / "modules.json"
    problems: list[str] = []
    try:
        for _ in range(1200):  # the listener's subscription is in place (a minute at most)
            if client.pubsub_numsub(keys.events_channel(0))[0][1]:
                break
            threading.Event().wait(0.05)
        draft = run = ""
        for words, unwanted in NOT_NEEDED.items():
            assert unwanted <= HEAVY, f"{words}: not in HEAVY: {unwanted - HEAVY}"
            as_json = words[-1] == "--json"
            args = [*words[:-1]] if as_json else [*words]
            if words[:2] == ("dataset", "create"):
                args += ["--project", "p", "--name", "d"]
            elif words[:2] == ("dataset", "add"):
                args += ["--files", "batch.csv"]
            elif words[:2] == ("dataset", "tag"):  # tags it has not got yet: an event
                args += [final, *(["Production"] if as_json else ["Staging", "Canary"])]
            elif words[:2] == ("dataset", "untag"):  # the tags the plain `dataset tag` added
                args += [final, "Staging" if as_json else "Canary"]
            elif words[:2] in {("dataset", "show"), ("dataset", "publish")}:
                args += [final]
            elif words[:2] == ("dataset", "list"):
                args += ["--id", final]
            elif words[:2] == ("task", "show"):
                args += [template]
            elif words[:2] == ("task", "run"):
                args += ["p/train"]
            elif words[:2] == ("model", "show"):
                args += [model]
            elif words[:2] == ("model", "tag"):  # a new tag: an event
                args += [model, "Production" if as_json else "Staging"]
            elif words[:2] == ("model", "publish"):
                args += [model]
            elif words[0] in ("logs", "metrics"):  # a queued run: its live stream is read
                args += [run]
            woken.clear()
            done, seen = run_command([*args, "--json"] if as_json else args, tmp_path, report)
            if store == "sqlite":
                unwanted |= NOT_ON_SQLITE
            modules: list[str] = seen["modules"]  # type: ignore[assignment]
            loaded = sorted(u for u in unwanted if any(_within(m, u) for m in modules))
            if loaded:
                problems.append(f"retrain {' '.join(words)} loaded {', '.join(loaded)}")
            if not seen["frozen"]:
                problems.append(f"retrain {' '.join(words)} left its heap to the final GC")
            if words[:2] == ("dataset", "create") and as_json:
                draft = str(json.loads(done.stdout)["id"])
            if words[:2] == ("task", "run") and as_json:
                run = str(json.loads(done.stdout)["id"])
            # Its events were announced (one PUBLISH over a plain socket, no redis-py).
            announces = (
                words[0] == "dataset" and words[1] in {"create", "close", "tag", "untag", "publish"}
            ) or (
                words[0] == "model" and words[1] in {"tag", "publish"}
            )
            if announces and not woken.wait(30):
                problems.append(f"retrain {' '.join(words)} woke no scheduler")
    finally:
        listener.stop()
        client.close()
    assert not problems, "\n".join(problems)
    # What the commands wrote is there: the tag, the closed draft with its file, the run.
    assert "Production" in cli.json("dataset", "show", final)["version"]["tags"]  # type: ignore[index]
    closed = cli.json("dataset", "show", draft)["version"]  # type: ignore[index]
    assert closed["status"] == "final" and closed["file_count"] == 1
    assert len(cli.json("task", "list", "--status", "queued")) == 2  # type: ignore[arg-type]


def test_a_bad_setting_is_one_line_naming_the_variable(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings are read without pydantic-settings; the errors stay what they were."""
    for name, value, message in [
        ("HEARTBEAT_TTL_S", "soon", "Input should be a valid integer"),
        ("GC_GRACE_MINUTES", "-1", "Input should be greater than or equal to 0"),
        ("WORKER_SECRET", "short", "String should have at least 16 characters"),
        ("ENV_CACHE_MAX_COUNT", "0", "Input should be greater than or equal to 1"),
    ]:
        name, message = f"RETRAIN_{name}", f"RETRAIN_{name}: {message}"
        with monkeypatch.context() as m:
            m.setenv(name, value)
            err = cli("dataset", "search", expect=2).err
            assert err.startswith("retrain: error: ") and message in err, err
            assert err.count("\n") == 1, err


def test_the_plain_wakeup_reaches_a_tcp_redis_on_its_database(machine_redis: str) -> None:
    """The wake-up a command sends without redis-py: right channel (the URL's database), and
    an unreachable or refusing Redis costs the command nothing (best effort)."""
    import redis

    from orchestrator.queue import keys
    from orchestrator.queue.wakeup import Listener, publish_plain, publisher
    from orchestrator.settings import Settings

    client = redis.Redis.from_url(machine_redis)
    db = int(client.connection_pool.connection_kwargs.get("db") or 0)
    woken = threading.Event()
    listener = Listener(client, woken)
    listener.start()
    try:
        for _ in range(1200):
            if client.pubsub_numsub(keys.events_channel(db))[0][1]:
                break
            threading.Event().wait(0.05)
        assert publish_plain(machine_redis)
        assert woken.wait(30)
        woken.clear()
        assert publish_plain(machine_redis.rsplit("/", 1)[0] + f"/{db + 1}")  # another database
        assert not woken.wait(1.0)
        assert not publish_plain("rediss://localhost:6380/0")  # TLS: left to redis-py
        with pytest.raises(OSError, match=r"WRONGPASS|AUTH"):
            publish_plain(machine_redis.replace("redis://", "redis://nobody:wrong@", 1))
        # The callback the store runs after commit swallows it.
        publisher(Settings.load(redis_url="redis://127.0.0.1:1/0"))()
    finally:
        listener.stop()
        client.close()
