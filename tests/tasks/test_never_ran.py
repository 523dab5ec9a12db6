"""New-user pass, round 2: `logs` and `metrics` of a task that never ran say what to do with
it: a template is run with `task run` (it is never queued itself, `task enqueue` refuses it),
a draft run is queued with `task enqueue`, each by its id."""

from __future__ import annotations

import pytest

from tests.conftest import CLI
from tests.tasks.conftest import Repo, git_repo  # noqa: F401


@pytest.mark.parametrize("command", ["logs", "metrics"])
def test_a_template_or_draft_says_how_to_run_it(
    cli: CLI,
    git_repo: Repo,  # noqa: F811
    command: str,
) -> None:
    template = cli("task", "create", "--project", "p", "--name", "t", "--repo",
                   str(git_repo.path), "--script", "train.py").out.strip()
    draft = cli("task", "clone", "p/t").out.strip()
    err = cli(command, template, expect=2).err
    assert "is a template" in err and f"retrain task run {template}" in err
    assert "enqueue" not in err
    err = cli(command, draft, expect=2).err
    assert "is a draft" in err and f"retrain task enqueue {draft}" in err
