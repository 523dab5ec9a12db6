"""Templates stay templates (issue 13): `project/name` and `@tag` name template revisions,
never runs, so a trigger clones exactly what was registered however many manual runs happened
in between. Through the real CLI and scheduler, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from tests.tasks.conftest import Repo
from tests.triggers.conftest import Loop
from tests.triggers.test_scheduler import tasks_of

NAME = "dataset_blogpost/training"


def register(loop: Loop, repo: Repo, lr: str, *tags: str) -> str:
    extra = ["--tags", *tags] if tags else []
    return loop.cli("task", "create", "--project", "dataset_blogpost", "--name", "training",
                    "--repo", str(repo.path), "--script", "train.py", "--queue", "gpu",
                    "--param", "General/dataset_id=", "General/note=", f"Args/lr={lr}",
                    *extra).out.strip()


def show(loop: Loop, ref: str) -> Any:
    return loop.cli.json("task", "show", ref)


def test_a_trigger_clones_the_template_revision_never_a_manual_run(
    loop: Loop, database_url: str, git_repo: Repo
) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    assert scheduler.reload(force=True)
    scheduler.tick()
    stable = register(loop, git_repo, "0.01", "stable")  # revision 2 (the loop made 1)

    # Day two: a manual run with an override, on another queue, tagged like the template;
    # it completes. And a draft clone sent elsewhere.
    manual = loop.cli("task", "run", NAME, "--param", "Args/lr=0.5", "--queue", "cpu",
                      "--tags", "stable").out.strip()
    runtime.tasks.start(manual, "gpu-box-1")
    runtime.tasks.finish(manual, "completed", exit_code=0)
    loop.cli("task", "clone", NAME, "--queue", "elsewhere")

    runtime.datasets.tag(loop.version(runtime, "first"), ["Production"])
    assert scheduler.tick().fired == 1
    [fired] = tasks_of(runtime)
    assert fired.parent_id == stable, "the trigger cloned a run, not the template"
    assert fired.template_id == stable and fired.kind == "run"
    assert fired.parameters["Args/lr"] == 0.01 and fired.queue == "gpu"
    assert fired.tags == ["auto"]  # the trigger's tags; none inherited from the template

    # `task run p/train` goes where the template says, whatever its runs did.
    plain = show(loop, loop.cli("task", "run", NAME).out.strip())
    assert (plain["queue"], plain["template"], plain["parameters"]["Args/lr"]) == (
        "gpu", stable, 0.01)
    # `@tag` moves only among templates: the tagged manual run is not a candidate.
    assert show(loop, f"{NAME}@stable")["id"] == stable
    assert show(loop, manual)["tags"] == ["stable"] and show(loop, manual)["kind"] == "run"

    # A new revision is what the next firing clones; `@stable` stays where it was.
    newest = register(loop, git_repo, "0.02")
    runtime.datasets.tag(loop.version(runtime, "second"), ["Production"])
    assert scheduler.tick().fired == 1
    second = tasks_of(runtime)[-1]
    assert (second.template_id, second.parameters["Args/lr"]) == (newest, 0.02)
    assert show(loop, f"{NAME}@stable")["id"] == stable

    # `task show TEMPLATE`: the newest revision, every revision, the latest runs.
    shown = show(loop, NAME)
    assert (shown["id"], shown["kind"], shown["revision"]) == (newest, "template", 3)
    assert [r["revision"] for r in shown["revisions"]] == [3, 2, 1]
    assert [r["id"] for r in shown["runs"]][:2] == [second.id, plain["id"]]
    assert {r["template_revision"] for r in shown["runs"]} == {2, 3}
    human = loop.cli("task", "show", NAME).out
    assert "revisions" in human and "latest runs" in human and second.id in human

    # Listing keeps them apart: runs by default, templates on request.
    templates = loop.cli.json("task", "list", "--templates")
    assert [(t["id"], t["revision"]) for t in templates] == [
        (newest, 3), (stable, 2), (loop.template, 1)]
    listed_runs = {t["id"] for t in loop.cli.json("task", "list")}
    assert manual in listed_runs and not listed_runs & {newest, stable, loop.template}
    assert listed_runs == {t["id"] for t in loop.cli.json("task", "list", "--runs")}

    # A run's id is still an exact re-run: its overrides, queue and commit.
    again = show(loop, loop.cli("task", "run", manual).out.strip())
    old = show(loop, manual)
    assert (again["parameters"], again["queue"], again["spec"]["commit"]) == (
        old["parameters"], "cpu", old["spec"]["commit"])
    assert (again["parent"], again["template"], again["tags"]) == (manual, stable, [])

    # A template itself is never queued.
    err = loop.cli("task", "enqueue", stable, expect=2).err
    assert "is a template" in err and f"retrain task run {stable}" in err
    runtime.close()


def test_a_run_id_as_template_is_a_load_error_and_the_last_good_file_stays(
    loop: Loop, database_url: str, tmp_path: Path
) -> None:
    runtime = Runtime()
    scheduler = Scheduler(runtime, loop.triggers, reconcile_every=0)
    assert scheduler.reload(force=True)
    good = scheduler.config
    assert good is not None
    run = loop.cli("task", "run", NAME, "--param", "General/note=manual").out.strip()

    text = loop.triggers.read_text().replace(f"template: {NAME}", f"template: {run}")
    assert text != loop.triggers.read_text()
    bad = tmp_path / "bad-triggers.yaml"
    bad.write_text(text)
    expected = (f"{run} is a run of {NAME}, not a template; name the template: '{NAME}' "
                f"(its newest revision) or {loop.template} (revision 1")
    err = loop.cli("triggers", "check", str(bad), expect=2).err
    assert "bad-triggers.yaml:" in err and "run.template" in err and expected in err, err

    # The running scheduler finds it on reload and keeps the triggers it had.
    loop.triggers.write_text(text)
    assert not scheduler.reload(force=True)
    assert scheduler.config is good
    scheduler.tick()  # its heartbeat publishes the error for `status`
    status = loop.cli.json("status")["scheduler"]["config"]
    assert expected in str(status), status
    runtime.close()
