"""`retrain triggers check` as a user runs it: every problem the scheduler would meet later
(a cron its parser refuses, an override or input the template refuses, a template that does
not exist, durations that overflow, files that are not YAML text) fails the check with
`file:line:col`, exit 2 and no traceback, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from tests.conftest import CLI
from tests.tasks.conftest import Repo, git_repo  # noqa: F401

HEAD = "version: 1\ntriggers:\n"
DATASET_TRIGGER = """\
  - name: retrain
    on: {dataset: {project: blog, tags: [Production]}}
    run:
      template: blog/train
"""


@pytest.fixture
def store(cli: CLI, git_repo: Repo, database_url: str,  # noqa: F811
          monkeypatch: pytest.MonkeyPatch) -> str:
    """A store with the template `blog/train`: a string, a float and an integer parameter,
    and the input `data` (the version its `General/dataset_id` names)."""
    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)
    return cli("task", "create", "--project", "blog", "--name", "train", "--repo",
               str(git_repo.path), "--script", "train.py", "--param", "General/dataset_id=",
               "--param", "General/lr=0.1", "--param", "General/epochs=3", "--input",
               "data=${params.General/dataset_id}").out.strip()


def check(cli: CLI, path: Path, text: str, expect: int) -> str:
    path.write_text(text)
    result = cli("triggers", "check", str(path), expect=expect)
    return result.err


# -- finding 4: the daemon's own schedule parser ----------------------------------------------


@pytest.mark.parametrize(("schedule", "where", "says"), [
    ('cron: "99 * * * *"', "5:18: triggers[0].on.schedule.cron",
     "the last value (99) is higher than the maximum value (59)"),
    ('cron: "0 3 * * 8"', "5:18: triggers[0].on.schedule.cron", "maximum value (6)"),
    ('cron: "0 3 * * *", timezone: Mars/Olympus', "5:37: triggers[0].on.schedule.timezone",
     "unknown timezone 'Mars/Olympus'"),
])
def test_a_schedule_the_daemon_cannot_build_fails_check(
    cli: CLI, store: str, tmp_path: Path, schedule: str, where: str, says: str
) -> None:
    path = tmp_path / "triggers.yaml"
    text = HEAD + f"""\
  - name: nightly
    on:
      schedule: {{{schedule}}}
    run: {{template: blog/train}}
"""
    err = check(cli, path, text, expect=2)
    [line] = err.strip().splitlines()
    assert line.startswith(f"{path}:{where}: "), line
    assert says in line


def test_the_daemon_refuses_an_invalid_cron_and_keeps_no_schedule(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.tasks.conftest import machine_redis_url

    monkeypatch.setenv("RETRAIN_REDIS_URL", machine_redis_url())
    path = tmp_path / "triggers.yaml"
    path.write_text(HEAD + """\
  - name: nightly
    on: {schedule: {cron: "99 * * * *"}}
    run: {template: blog/train}
""")
    scheduler = Scheduler(Runtime(), path)
    assert scheduler.reload(force=True) is False
    assert scheduler.config is None


# -- durations, aliases, encodings (issue 10) -------------------------------------------------


@pytest.mark.parametrize(("line", "field"), [
    ("    policy: {cooldown: 99999999999999999999d}\n", "triggers[0].policy.cooldown"),
    ("    policy: {cooldown: 400d}\n", "triggers[0].policy.cooldown"),
])
def test_durations_have_a_maximum(cli: CLI, store: str, tmp_path: Path, line: str,
                                  field: str) -> None:
    path = tmp_path / "triggers.yaml"
    err = check(cli, path, HEAD + DATASET_TRIGGER + line, expect=2)
    [problem] = err.strip().splitlines()
    assert problem.startswith(f"{path}:7:14:") and f": {field}: " in problem
    assert "at most 365d" in problem


def test_an_interval_has_a_maximum(cli: CLI, store: str, tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    err = check(cli, path, HEAD + """\
  - name: sometimes
    on: {schedule: {every: 99999999999999999999d}}
    run: {template: blog/train}
""", expect=2)
    [problem] = err.strip().splitlines()
    assert problem.startswith(f"{path}:4:21: triggers[0].on.schedule.every: ")
    assert "at most 365d" in problem


def test_an_alias_bomb_is_refused(cli: CLI, store: str, tmp_path: Path) -> None:
    # Nine levels of ten aliases: 10^9 nodes once expanded, a few hundred bytes of text.
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    bomb = "bomb:\n" + "".join(f"  {level}\n" for level in levels)
    path = tmp_path / "triggers.yaml"
    err = check(cli, path, HEAD + DATASET_TRIGGER + bomb, expect=2)
    [problem] = err.strip().splitlines()
    assert problem.startswith(f"{path}:") and "aliases expand to more than" in problem


@pytest.mark.parametrize(("content", "says"), [
    (b"version: 1\ntriggers:\n  - name: caf\xe9\n", ":3:14: not UTF-8 text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ":1:1: not UTF-8 text"),
    (b"version: 1\ntriggers: []\n# \x00\n", ":3:3: the file contains a NUL character"),
])
def test_files_that_are_not_text_get_one_line(cli: CLI, store: str, tmp_path: Path,
                                              content: bytes, says: str) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_bytes(content)
    err = cli("triggers", "check", str(path), expect=2).err
    [problem] = err.strip().splitlines()
    assert problem.startswith(f"{path}{says}"), problem


# -- finding 7: overrides and inputs against the template -------------------------------------


def test_overrides_and_inputs_are_checked_against_the_template(
    cli: CLI, store: str, tmp_path: Path
) -> None:
    path = tmp_path / "triggers.yaml"
    err = check(cli, path, HEAD + DATASET_TRIGGER + """\
      overrides:
        General/nope: x
        General/lr: fast
        General/epochs: 2.5
        General/dataset_id: "${dataset.id/x"
      inputs: {data: "${dataset.id}", extra: "${dataset.id}"}
""", expect=2)
    problems = err.strip().splitlines()
    overrides = "triggers[0].run.overrides"
    assert problems == [
        f"{path}:8:9: {overrides}.General/nope: the template blog/train has no parameter "
        "General/nope (it has: General/dataset_id, General/epochs, General/lr); set "
        "run.allow_new_params: true to add one",
        f"{path}:9:9: {overrides}.General/lr: expects a number, got 'fast'",
        f"{path}:10:9: {overrides}.General/epochs: expects an integer, got 2.5",
        f"{path}:11:9: {overrides}.General/dataset_id: unterminated placeholder in "
        "'${dataset.id/x' (close it with }, or write $${ for a literal ${)",
        f"{path}:12:39: triggers[0].run.inputs.extra: the template blog/train has no input "
        "extra (it has: data); set run.allow_new_params: true to add one",
    ]


def test_allow_new_params_in_yaml_lets_new_names_through(
    cli: CLI, store: str, tmp_path: Path
) -> None:
    path = tmp_path / "triggers.yaml"
    out = check(cli, path, HEAD + DATASET_TRIGGER + """\
      overrides: {General/nope: x, General/lr: 0.5, General/epochs: "4"}
      inputs: {extra: "${dataset.id}"}
      allow_new_params: true
""", expect=0)
    assert "1 trigger(s) OK" in out


def test_templates_are_found_as_a_run_would_find_them(
    cli: CLI, store: str, git_repo: Repo, tmp_path: Path  # noqa: F811
) -> None:
    # A newer revision of blog/train has General/batch; the template named by id does not.
    cli("task", "create", "--project", "blog", "--name", "train", "--repo",
        str(git_repo.path), "--script", "train.py", "--param", "General/batch=32")
    path = tmp_path / "triggers.yaml"
    by_name = DATASET_TRIGGER + "      overrides: {General/batch: 64}\n"
    by_id = by_name.replace("name: retrain", "name: pinned").replace("blog/train", store)
    err = check(cli, path, HEAD + by_name + by_id, expect=2)
    [problem] = err.strip().splitlines()
    assert problem.startswith(f"{path}:12:19: triggers[1].run.overrides.General/batch: "
                              f"the template {store} has no parameter General/batch")


# -- finding 11: a template that does not exist ----------------------------------------------


def test_a_missing_template_fails_check(cli: CLI, store: str, tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    err = check(cli, path, HEAD + DATASET_TRIGGER.replace("blog/train", "blog/nothing"),
                expect=2)
    [problem] = err.strip().splitlines()
    assert problem.startswith(f"{path}:6:7: triggers[0].run.template: no template "
                              "'blog/nothing'"), problem


def test_up_says_at_start_that_a_template_is_missing(
    tmp_path: Path, retrain_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from orchestrator import health
    from tests.tasks.conftest import machine_redis_url
    from tests.triggers.conftest import wait_for

    monkeypatch.setenv("RETRAIN_REDIS_URL", machine_redis_url())
    path = tmp_path / "triggers.yaml"
    path.write_text(HEAD + DATASET_TRIGGER.replace("blog/train", "blog/nothing"))
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "up", "--gpus",
         "none"], env=os.environ.copy(), stdout=log, stderr=log, cwd=tmp_path)
    try:
        wait_for(lambda: health.check(retrain_home, "scheduler", 60)[0], "retrain up to start")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert (f"retrain up: warning: {path}:6:7: triggers[0].run.template: no template "
            "'blog/nothing'") in output, output


def test_check_takes_the_file_as_triggers_option_like_every_triggers_command(
    cli: CLI, store: str, tmp_path: Path
) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(HEAD + """\
  - name: on-data
    on: {dataset: {project: blog, name: "*"}}
    run: {template: blog/train}
""")
    assert "1 trigger(s) OK" in cli("triggers", "check", "--triggers", str(path)).err
    assert "1 trigger(s) OK" in cli("triggers", "check", str(path)).err
    broken = tmp_path / "broken.yaml"
    broken.write_text(HEAD + "  - name: x\n")
    assert "broken.yaml:" in cli("triggers", "check", "--triggers", str(broken), expect=2).err
    err = cli("triggers", "check", str(path), "--triggers", str(broken), expect=2).err
    assert "give the file once" in err


@pytest.mark.parametrize(("metric", "says"), [
    ("avg(loss)", "avg(loss): unknown aggregate 'avg'"),
    ("mean(val/acc)", "mean(val/acc): unknown aggregate 'mean'"),
    ("max()", "max(): names no metric"),
])
def test_a_metric_condition_with_an_unknown_aggregate_fails_check(
    cli: CLI, store: str, tmp_path: Path, metric: str, says: str
) -> None:
    """`avg(loss)` was taken as a metric literally named "avg(loss)": the trigger never fired
    and nothing said why. Only min(), max() and last() are aggregates; anything else shaped like
    a call is a typo the check names."""
    path = tmp_path / "triggers.yaml"
    text = HEAD + f"""\
  - name: promote
    on:
      task: {{project: blog, metrics: {{"{metric}": "<= 0.2"}}}}
    run: {{template: blog/train}}
    allow_cycles: true
"""
    err = check(cli, path, text, expect=2)
    [line] = err.strip().splitlines()
    assert line.startswith(f"{path}:"), line
    assert says in line and "min(), max() or last()" in line, line


def test_metric_conditions_with_known_aggregates_pass_check(
    cli: CLI, store: str, tmp_path: Path
) -> None:
    path = tmp_path / "triggers.yaml"
    text = HEAD + """\
  - name: promote
    on:
      task: {project: blog, metrics: {"min(loss)": "<= 0.2", "max( val/acc )": ">= 0.9",
                                      "last(loss)": "< 1", "val/acc": "> 0"}}
    run: {template: blog/train}
    allow_cycles: true
"""
    check(cli, path, text, expect=0)
