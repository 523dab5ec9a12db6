"""Working trees from bare mirrors, with real git repositories in temporary folders."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import orchestrator.git as gitmod
from orchestrator.errors import RetrainError
from orchestrator.git import Mirror, working_diff
from tests.tasks import conftest as tasks_fixtures
from tests.tasks.conftest import Repo, run_git
from workers.checkout import (
    TOKEN_ENV,
    CheckoutError,
    checkout,
    git_credentials_from_env,
    remove,
)


def tree(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file under `root` outside `.git`: contents and whether it is executable."""
    files = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] == ".git" or not path.is_file():
            continue
        files[rel.as_posix()] = (path.read_bytes(), os.access(path, os.X_OK))
    return files


def tree_at(repo: Path, commit: str) -> dict[str, bytes]:
    names = run_git(repo, "ls-tree", "-r", "--name-only", commit).splitlines()
    return {
        name: subprocess.run(
            ["git", "show", f"{commit}:{name}"], cwd=repo, check=True, capture_output=True
        ).stdout
        for name in names
    }


git_repo = tasks_fixtures.git_repo  # the shared fixture: two commits and a feature branch


@pytest.fixture
def mirrors(tmp_path: Path) -> Mirror:
    return Mirror(tmp_path / "mirrors")


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every `orchestrator.git.git` call's arguments; the real git still runs."""
    calls: list[tuple[str, ...]] = []
    real = gitmod.git

    def spy(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gitmod, "git", spy)
    return calls


def updates(calls: list[tuple[str, ...]]) -> int:
    return sum(1 for args in calls if args[:2] == ("remote", "update"))


@pytest.mark.parametrize("which", ["first", "head", "feature"])
def test_checkout_gives_exactly_the_commit(
    git_repo: Repo, mirrors: Mirror, tmp_path: Path, which: str
) -> None:
    commit = getattr(git_repo, which)
    dest = checkout(mirrors, str(git_repo.path), commit, None, tmp_path / "work" / which)
    assert run_git(dest, "rev-parse", "HEAD") == commit
    assert {name: content for name, (content, _) in tree(dest).items()} == tree_at(
        git_repo.path, commit
    )
    assert run_git(dest, "status", "--porcelain") == ""
    # The tree borrows the mirror's objects instead of copying them.
    alternates = (dest / ".git/objects/info/alternates").read_text()
    assert str(mirrors.path(str(git_repo.path))) in alternates


def test_recorded_diff_reproduces_the_dirty_tree(
    git_repo: Repo, mirrors: Mirror, tmp_path: Path
) -> None:
    dirty = tmp_path / "dirty"
    subprocess.run(["git", "clone", "-q", str(git_repo.path), str(dirty)], check=True)
    (dirty / "train.py").write_text("print('training harder')\nprint('done')\n")
    (dirty / "train.py").chmod(0o755)
    (dirty / "pkg/evaluate.py").unlink()
    (dirty / "notes").mkdir()
    (dirty / "notes/new.txt").write_text("untracked\n")
    (dirty / "weights.bin").write_bytes(bytes(range(256)) * 40 + b"\0\xff\0")
    diff = working_diff(dirty)
    assert diff is not None and "GIT binary patch" in diff

    dest = checkout(mirrors, str(git_repo.path), git_repo.head, diff, tmp_path / "work")
    assert tree(dest) == tree(dirty)
    assert run_git(dest, "rev-parse", "HEAD") == git_repo.head
    assert not (dest / ".git/retrain-recorded.diff").exists()


def test_mirror_is_fetched_only_when_the_commit_is_missing(
    git_repo: Repo, mirrors: Mirror, tmp_path: Path, git_calls: list[tuple[str, ...]]
) -> None:
    repo = str(git_repo.path)
    checkout(mirrors, repo, git_repo.head, None, tmp_path / "a")
    assert [args[0] for args in git_calls].count("clone") == 1
    assert updates(git_calls) == 0

    (git_repo.path / "later.py").write_text("print('later')\n")
    run_git(git_repo.path, "add", "-A")
    run_git(git_repo.path, "commit", "-qm", "later")
    later = run_git(git_repo.path, "rev-parse", "HEAD")

    dest = checkout(mirrors, repo, later, None, tmp_path / "b")
    assert updates(git_calls) == 1
    assert (dest / "later.py").read_text() == "print('later')\n"
    assert run_git(dest, "rev-parse", "HEAD") == later

    checkout(mirrors, repo, later, None, tmp_path / "c")
    checkout(mirrors, repo, git_repo.first, None, tmp_path / "d")
    assert updates(git_calls) == 1
    assert [args[0] for args in git_calls].count("clone") == 1


def test_unknown_commit_is_refused_and_leaves_nothing(
    git_repo: Repo, mirrors: Mirror, tmp_path: Path, git_calls: list[tuple[str, ...]]
) -> None:
    dest = tmp_path / "work"
    missing = "0123456789abcdef" * 2 + "01234567"
    checkout(mirrors, str(git_repo.path), git_repo.head, None, tmp_path / "warm")
    with pytest.raises(CheckoutError) as caught:
        checkout(mirrors, str(git_repo.path), missing, None, dest)
    assert isinstance(caught.value, RetrainError)
    assert str(caught.value) == f"commit {missing} is not in the repository {git_repo.path}"
    assert updates(git_calls) == 1  # it looked for it upstream before giving up
    assert not dest.exists()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections to 127.0.0.1:1 fail at once instead of going through a proxy."""
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_proxy")
def test_url_in_messages_has_no_credentials(mirrors: Mirror, tmp_path: Path) -> None:
    dest = tmp_path / "work"
    with pytest.raises(CheckoutError) as caught:
        checkout(mirrors, "file:///nonexistent-s3cret/x.git", "a" * 40, None, dest)
    assert str(caught.value).startswith("fetching file:///nonexistent-s3cret/x.git failed: ")
    with pytest.raises(CheckoutError) as caught:
        checkout(mirrors, "https://user:hunter2@127.0.0.1:1/x.git", "a" * 40, None, dest)
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).startswith("fetching https://127.0.0.1:1/x.git failed: ")
    with pytest.raises(CheckoutError) as caught:  # a token as the user part, GitHub style
        checkout(mirrors, "https://ghp_s3cr3ttoken@127.0.0.1:1/x.git", "a" * 40, None, dest)
    assert "s3cr3t" not in str(caught.value)
    assert not dest.exists()


def test_diff_that_does_not_apply_is_refused_and_leaves_nothing(
    git_repo: Repo, mirrors: Mirror, tmp_path: Path
) -> None:
    diff = (
        "diff --git a/train.py b/train.py\n"
        "--- a/train.py\n"
        "+++ b/train.py\n"
        "@@ -1 +1 @@\n"
        "-print('something else entirely')\n"
        "+print('changed')\n"
    )
    dest = tmp_path / "work"
    with pytest.raises(CheckoutError) as caught:
        checkout(mirrors, str(git_repo.path), git_repo.head, diff, dest)
    message = str(caught.value)
    assert message.startswith("applying the recorded diff failed: ")
    assert "train.py" in message  # git's own words name the file
    assert not dest.exists()


def test_garbage_diff_is_refused(git_repo: Repo, mirrors: Mirror, tmp_path: Path) -> None:
    with pytest.raises(CheckoutError, match="applying the recorded diff"):
        checkout(mirrors, str(git_repo.path), git_repo.head, "not a patch\n", tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_dest_must_be_missing_or_empty(git_repo: Repo, mirrors: Mirror, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(CheckoutError, match="exists and is not empty"):
        checkout(mirrors, str(git_repo.path), git_repo.head, None, busy)
    assert (busy / "keep.txt").read_text() == "mine"  # refused, not cleaned up

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CheckoutError, match="exists and is not empty"):
        checkout(mirrors, str(git_repo.path), git_repo.head, None, a_file)
    assert a_file.read_text() == "x"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert checkout(mirrors, str(git_repo.path), git_repo.head, None, empty) == empty
    assert (empty / "train.py").exists()


@pytest.mark.parametrize("commit", ["--upload-pack=touch pwned", "main", "HEAD", ""])
def test_only_commit_hashes_are_accepted(
    git_repo: Repo, mirrors: Mirror, tmp_path: Path, commit: str
) -> None:
    with pytest.raises(CheckoutError, match="is not a commit hash"):
        checkout(mirrors, str(git_repo.path), commit, None, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    assert not mirrors.root.exists()


def test_remove_deletes_the_tree_and_leaves_the_mirror_usable(
    git_repo: Repo, mirrors: Mirror, tmp_path: Path
) -> None:
    dest = checkout(mirrors, str(git_repo.path), git_repo.head, None, tmp_path / "w")
    remove(dest)
    assert not dest.exists()
    remove(dest)  # already gone: fine
    mirror = mirrors.path(str(git_repo.path))
    assert not (mirror / "worktrees").exists()  # nothing was registered in the mirror
    assert run_git(mirror, "fsck", "--no-progress") == ""
    again = checkout(mirrors, str(git_repo.path), git_repo.head, None, dest)
    assert run_git(again, "rev-parse", "HEAD") == git_repo.head


# Credentials -------------------------------------------------------------------------------


def spy_subprocesses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """Every subprocess git is started with: its argv and its environment."""
    seen: list[tuple[list[str], dict[str, str]]] = []
    real: Callable[..., Any] = subprocess.run

    def spy(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        seen.append((list(argv), dict(kwargs.get("env") or os.environ)))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    return seen


@pytest.mark.usefixtures("no_proxy")
def test_token_goes_to_git_through_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, mirrors: Mirror, tmp_path: Path
) -> None:
    token = "tok-0123456789-secret"
    monkeypatch.setenv(TOKEN_ENV, token)
    count_before = os.environ.get("GIT_CONFIG_COUNT")
    seen = spy_subprocesses(monkeypatch)
    repo = "https://127.0.0.1:1/team/project.git"  # nothing listens: the fetch fails at once

    with pytest.raises(CheckoutError) as caught:
        checkout(mirrors, repo, "a" * 40, None, tmp_path / "w")
    assert token not in str(caught.value)
    assert seen and seen[0][0][:3] == ["git", "clone", "--mirror"]
    for argv, _ in seen:
        assert not any(token in arg for arg in argv)
    argv, env = seen[0]
    n = int(env["GIT_CONFIG_COUNT"]) - 1
    assert env[f"GIT_CONFIG_KEY_{n}"] == "http.https://127.0.0.1:1/.extraHeader"
    assert env[f"GIT_CONFIG_VALUE_{n}"] == f"Authorization: Bearer {token}"
    # Gone afterwards: the training process started later must not inherit it.
    assert not any(token in value for value in os.environ.values() if value != token)
    assert os.environ.get("GIT_CONFIG_COUNT") == count_before


def test_token_is_scoped_to_the_repository_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "tok")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # the worker's own settings are kept
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.abbrev")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "12")

    def header(url: str) -> str:
        return gitmod.git("config", "--get-urlmatch", "http.extraHeader", url, check=False).stdout

    with git_credentials_from_env("https://git.example.com/team/project.git"):
        assert header("https://git.example.com/team/project.git") == "Authorization: Bearer tok\n"
        assert header("https://git.example.com/other.git") == "Authorization: Bearer tok\n"
        assert header("https://evil.example.org/team/project.git") == ""
        assert header("http://git.example.com/team/project.git") == ""
        assert gitmod.git("config", "core.abbrev").stdout == "12\n"
    assert os.environ["GIT_CONFIG_COUNT"] == "1"
    assert "GIT_CONFIG_KEY_1" not in os.environ and "GIT_CONFIG_VALUE_1" not in os.environ


@pytest.mark.parametrize(
    "repo", ["http://git.example.com/x.git", "ssh://git@git.example.com/x.git", "/srv/x"]
)
def test_no_token_outside_https(monkeypatch: pytest.MonkeyPatch, repo: str) -> None:
    monkeypatch.setenv(TOKEN_ENV, "tok")
    before = dict(os.environ)
    with git_credentials_from_env(repo):
        assert dict(os.environ) == before


def test_no_token_no_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    before = dict(os.environ)
    with git_credentials_from_env("https://git.example.com/x.git"):
        assert dict(os.environ) == before


# A larger repository -----------------------------------------------------------------------


def many_commits(path: Path, count: int) -> list[str]:
    """A repository of `count` commits, each changing one of 50 files (via fast-import)."""
    path.mkdir()
    run_git(path, "init", "-q", "-b", "main")
    chunks = []
    for i in range(count):
        message = f"commit {i}\n".encode()
        content = f"# file {i % 50}, version {i}\n".encode() * 20
        chunks.append(
            b"commit refs/heads/main\n"
            + f"committer dev <dev@example.com> {1_700_000_000 + i} +0000\n".encode()
            + f"data {len(message)}\n".encode() + message
            + f"M 100644 inline src/mod{i % 50}.py\n".encode()
            + f"data {len(content)}\n".encode() + content + b"\n"
        )
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=path, input=b"".join(chunks), check=True
    )
    run_git(path, "reset", "-q", "--hard", "main")
    return run_git(path, "rev-list", "--reverse", "main").splitlines()


def test_warm_checkout_of_a_long_history(mirrors: Mirror, tmp_path: Path) -> None:
    commits = many_commits(tmp_path / "long", 200)
    assert len(commits) == 200
    repo = str(tmp_path / "long")

    started = time.perf_counter()
    checkout(mirrors, repo, commits[-1], None, tmp_path / "cold")
    cold = time.perf_counter() - started

    timings = []
    for i, commit in enumerate((commits[100], commits[-1], commits[0])):
        started = time.perf_counter()
        dest = checkout(mirrors, repo, commit, None, tmp_path / f"warm{i}")
        timings.append(time.perf_counter() - started)
        assert run_git(dest, "rev-parse", "HEAD") == commit
    assert len(tree(tmp_path / "warm0")) == 50
    print(
        f"\ncheckout of a 200-commit repository: cold (mirror clone) {cold * 1000:.0f} ms, "
        f"warm {', '.join(f'{t * 1000:.0f} ms' for t in timings)}"
    )
