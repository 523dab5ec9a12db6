"""Promises 5 and 6 of the trust boundary for what a task declares: a task's `env` never carries
a credential (tasks are stored, shown by `task show` and sent to Redis), and durations have
sane bounds. Each attempt is a real `retrain task create` that must exit 2, name the argument,
and leave the store empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo

git_repo = task_fixtures.git_repo

CREDENTIAL_NAMES = [
    "DB_PASS", "PGPASSWORD", "GITHUBTOKEN", "AUTHORIZATION", "ACCESSKEY", "PRIVATEKEY",
    "MYAPIKEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "wandbApiKey", "SSH_KEY", "CLIENT_SECRETS",
]
PLAIN_NAMES = [
    "TOKENIZERS_PARALLELISM", "MAX_TOKENS", "NUM_PASSES", "AUTHOR", "SORT_KEY", "OMP_NUM_THREADS",
]


def create(cli: CLI, repo: Repo, *extra: str, expect: int = 0) -> str:
    result = cli("task", "create", "--project", "p", "--name", "train", "--repo", str(repo.path),
                 "--script", "train.py", *extra, expect=expect)
    return result.out + result.err


@pytest.mark.parametrize("name", CREDENTIAL_NAMES)
def test_env_names_that_hold_credentials_are_refused(cli: CLI, git_repo: Repo, name: str) -> None:
    said = create(cli, git_repo, "--env", f"{name}=hunter2", expect=2)
    assert f"--env: {name} looks like a credential" in said, said
    assert "hunter2" not in said
    assert cli.json("task", "list") == []


def test_ordinary_names_pass_and_a_false_positive_can_be_declared(
    cli: CLI, git_repo: Repo
) -> None:
    create(cli, git_repo, *[a for n in PLAIN_NAMES for a in ("--env", f"{n}=1")])
    said = create(cli, git_repo, "--env", "AUTH_MODE=none", expect=2)
    assert "--env-not-secret AUTH_MODE" in said, said  # the error says how to declare it
    task = create(cli, git_repo, "--env", "AUTH_MODE=none", "--env-not-secret", "AUTH_MODE")
    shown = cli.json("task", "show", task.split()[0])
    assert shown["spec"]["env"]["AUTH_MODE"] == "none", shown["spec"]


@pytest.mark.parametrize("value", [
    "postgresql://admin:hunter2@db/prod",
    "https://user:hunter2@example.com/x",
    "redis://:hunter2@cache:6379/0",
])
def test_values_that_embed_url_credentials_are_refused_even_when_declared(
    cli: CLI, git_repo: Repo, value: str
) -> None:
    said = create(cli, git_repo, "--env", f"DATABASE_URL={value}",
                  "--env-not-secret", "DATABASE_URL", expect=2)
    assert "--env: DATABASE_URL" in said and "hunter2" not in said, said
    assert cli.json("task", "list") == []


@pytest.mark.parametrize("flag,value", [
    ("--timeout", "99999999999999999999d"), ("--timeout", "31d"), ("--abort-grace", "1e400"),
])
def test_durations_have_sane_maximums(cli: CLI, git_repo: Repo, flag: str, value: str) -> None:
    said = create(cli, git_repo, flag, value, expect=2)
    assert said.startswith(flag) or f"{flag}:" in said, said
    assert cli.json("task", "list") == []


def test_a_number_too_long_to_read_is_an_error_at_its_place(
    cli: CLI, git_repo: Repo, tmp_path: Path
) -> None:
    task = tmp_path / "task.yaml"
    task.write_text(f"project: p\nname: t\nrepo: {git_repo.path}\nscript: train.py\n"
                    f"retries: {'9' * 5000}\n")
    said = cli("task", "create", "-f", str(task), expect=2).err
    assert f"{task}:5:" in said and "too large" in said, said
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers:\n  - name: t\n    on: {dataset: {project: p}}\n"
                        f"    run: {{template: p/t, overrides: {{General/x: {'1' * 5000}}}}}\n")
    said = cli("triggers", "check", str(triggers), expect=2).err
    assert f"{triggers}:5:" in said and "too large" in said, said
    assert cli.json("task", "list") == []
