"""Promise 7 of the trust boundary: paths and what people read.

- `dataset add` follows one symlink rule for folders, globs and file arguments: nothing from
  outside the folder the user named comes in;
- names refuse bidirectional overrides; `x:y.csv` is an ordinary POSIX name;
- human output shows terminal control sequences escaped, never acts on them, whoever wrote
  the text (here a worker's report of an error, as anyone with Redis access can send).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from orchestrator.runtime import Runtime
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, machine_redis_url

git_repo = task_fixtures.git_repo


@pytest.fixture
def outside_link(tmp_path: Path) -> Path:
    """`data/` with an ordinary file, a link inside it, and a link to a secret outside it."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("root:x:0:0")
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n")
    (data / "alias.csv").symlink_to("rows.csv")
    (data / "passwd.csv").symlink_to(tmp_path / "outside" / "secret.txt")
    return data


def draft(cli: CLI) -> str:
    return cli("dataset", "create", "--project", "p", "--name", "d").out.strip()


@pytest.mark.parametrize("files", ["data/*", "data/passwd.csv", "data/*.csv"])
def test_globs_and_file_arguments_follow_the_folder_rule(
    cli: CLI, outside_link: Path, files: str
) -> None:
    version = draft(cli)
    said = cli("dataset", "add", "--id", version, "--files", files, expect=2).err
    assert "points outside" in said and "passwd.csv" in said, said
    assert cli.json("dataset", "list", "--id", version)["files"] == []


def test_links_that_stay_inside_are_fine_and_colons_are_names(
    cli: CLI, outside_link: Path
) -> None:
    (outside_link / "passwd.csv").unlink()
    (outside_link / "x:y.csv").write_text("1\n")
    version = draft(cli)
    cli("dataset", "add", "--id", version, "--files", "data/*.csv")
    paths = sorted(f["path"] for f in cli.json("dataset", "list", "--id", version)["files"])
    assert paths == ["alias.csv", "rows.csv", "x:y.csv"]


@pytest.mark.parametrize("args", [
    ["--project", "p", "--name", "invoice\u202egpj.exe"],
    ["--project", "team\u2066/x", "--name", "d"],
    ["--project", "p", "--name", "d", "--tags", "prod\u202e"],
    ["--project", "p", "--name", "bell\x9b"],
])
def test_names_refuse_bidirectional_overrides_and_controls(cli: CLI, args: list[str]) -> None:
    cli("dataset", "create", *args, expect=2)
    assert cli.json("dataset", "search") == []


def test_human_output_shows_escape_sequences_escaped(
    cli: CLI, git_repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = machine_redis_url()
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    task = cli("task", "create", "--project", "p", "--name", "t", "--repo", str(git_repo.path),
               "--script", "train.py").out.strip()
    tasks = Runtime().tasks
    info = tasks.clone(task)
    tasks.enqueue(info.id)  # queued in the store; Redis is not needed for this
    tasks.start(info.id, "worker\x1b]0;owned\x07")
    tasks.finish(info.id, "failed", exit_code=1, error="boom \x1b[2J\x1b[31mred\u202eevil")
    shown = cli("task", "show", info.id).out
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown, repr(shown)
    assert "boom \\x1b[2J\\x1b[31mred\\u202eevil" in shown, shown
    assert "worker\\x1b]0;owned\\x07" in shown


def test_names_from_a_run_cannot_forge_lines_of_task_show(
    cli: CLI, git_repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metric, parameter or series name is one line of `task show` however it is spelled:
    a newline in it (a job reports any name it likes) must not print a line of its own that
    reads like retrain's (a fake "models registered:" section)."""
    url = machine_redis_url()
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("RETRAIN_REDIS_URL", url)
    task = cli("task", "create", "--project", "p", "--name", "t", "--repo", str(git_repo.path),
               "--script", "train.py").out.strip()
    tasks = Runtime().tasks
    info = tasks.clone(task)
    tasks.enqueue(info.id)
    tasks.start(info.id, "w1")
    forged = "acc\n\nmodels registered:\n  m-1  prod/model  s3://evil/model"
    tasks.finish(info.id, "completed", exit_code=0, metrics={forged: 0.9},
                 logged_params={"lr\rx": 1})
    shown = cli("task", "show", info.id).out
    assert "\nmodels registered:" not in shown, shown
    assert "acc\\n\\nmodels registered:\\n  m-1" in shown, shown
    assert "lr\\rx = 1" in shown, shown
