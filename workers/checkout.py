"""A task's working tree: its repository at exactly the recorded commit, recorded diff applied.

The tree is made from the worker's bare mirror (`orchestrator.git.Mirror`), which is fetched
only when the commit is missing. Credentials never come from the task (tasks store URLs
without them): the worker's own `RETRAIN_GIT_TOKEN`, if set, is handed to git for https
repositories through `GIT_CONFIG_*` environment variables, never through a URL or argv.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from orchestrator.errors import RetrainError
from orchestrator.git import GitError, Mirror, git, safe_url

TOKEN_ENV = "RETRAIN_GIT_TOKEN"  # noqa: S105 (the variable's name, not a secret)
"""The worker's token for https repositories, sent as `Authorization: Bearer <token>`."""

DIFF_FILE = "retrain-recorded.diff"
"""Where, inside the new tree's `.git` folder, the recorded diff is written for `git apply`."""

_COMMIT = re.compile(r"[0-9a-fA-F]{4,64}")
_T = TypeVar("_T")


class CheckoutError(RetrainError):
    """A task's working tree could not be made; the message names the step that failed."""


@contextmanager
def git_credentials_from_env(repo: str) -> Iterator[None]:
    """While inside, git subprocesses of this process send `RETRAIN_GIT_TOKEN` to `repo`'s host.

    Only for https URLs (a bearer token must not cross plain http), and only to that scheme,
    host and port: git's URL-scoped key `http.<https://host/>.extraHeader` keeps the token
    from going to any other host. `orchestrator.git.git` passes `os.environ` to git, so the
    key is added there with `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`
    (after any the worker already has) and removed on leaving, so that the training process
    started later does not inherit the token. Changing `os.environ` is process-wide: a worker
    makes one checkout at a time.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    key = _header_key(repo)
    if not token or key is None:
        yield
        return
    try:
        index = int(os.environ.get("GIT_CONFIG_COUNT", "0") or "0")
    except ValueError:
        raise CheckoutError(
            "GIT_CONFIG_COUNT in the worker's environment is not a number"
        ) from None
    added = {
        f"GIT_CONFIG_KEY_{index}": key,
        f"GIT_CONFIG_VALUE_{index}": f"Authorization: Bearer {token}",
        "GIT_CONFIG_COUNT": str(index + 1),
    }
    before = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _header_key(repo: str) -> str | None:
    """`http.https://host[:port]/.extraHeader` for an https `repo`, else None."""
    parts = urlsplit(repo) if "://" in repo else None
    if parts is None or parts.scheme.lower() != "https" or not parts.netloc:
        return None
    host = parts.netloc.rpartition("@")[2]  # without any user part: it matches any user
    return f"http.https://{host}/.extraHeader"


def checkout(mirrors: Mirror, repo: str, commit: str, diff: str | None, dest: Path) -> Path:
    """Make `dest` a working tree of `repo` at exactly `commit`, with `diff` applied.

    `dest` must not exist or be an empty folder. The mirror is fetched (with the worker's
    credentials) only when it lacks `commit`. Any failure raises `CheckoutError` naming the
    step and leaves no `dest` behind. Returns `dest`; `remove(dest)` disposes of it.
    """
    shown = safe_url(repo)
    if not _COMMIT.fullmatch(commit):
        raise CheckoutError(f"{commit!r} is not a commit hash (repository {shown})")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CheckoutError(f"cannot check out into {dest}: it exists and is not empty")
    try:
        with git_credentials_from_env(repo):
            mirror = _step(f"fetching {shown}", lambda: mirrors.ensure(repo, commit))
        if not Mirror.has_commit(mirror, commit):
            raise CheckoutError(f"commit {commit} is not in the repository {shown}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # `git clone --shared` rather than `git worktree add`: the clone borrows the mirror's
        # objects through `.git/objects/info/alternates` (nothing is copied, so it is as cheap)
        # but writes nothing into the mirror. Worktrees would register metadata in the mirror
        # that concurrent workers sharing it would race on, outside the mirror's lock, and that
        # a crashed worker would leave stale until someone prunes it. Here disposal is just
        # deleting the folder. (The tree relies on the mirror keeping its objects, which it
        # does for the life of a task run: mirrors are only fetched, and git keeps even
        # unreferenced objects for two weeks.)
        _step(
            "creating the working tree",
            lambda: git(
                "clone", "--shared", "--no-checkout", "--quiet", "--", str(mirror), str(dest)
            ),
        )
        _step(
            f"checking out {commit}",
            lambda: git("checkout", "--quiet", "--detach", commit, cwd=dest),
        )
        if diff:
            _apply(dest, diff)
    except BaseException:
        remove(dest)
        raise
    return dest


def _apply(dest: Path, diff: str) -> None:
    """`git apply` the recorded diff in `dest`. The patch goes through a file in `.git` (not
    the working tree) because `orchestrator.git.git` takes no stdin; the file is deleted."""
    patch = dest / ".git" / DIFF_FILE
    with open(patch, "w", encoding="utf-8", newline="") as out:
        out.write(diff)
    try:
        _step(
            "applying the recorded diff",
            lambda: git("apply", "--whitespace=nowarn", "--binary", str(patch), cwd=dest),
        )
    finally:
        patch.unlink(missing_ok=True)


def _step(name: str, action: Callable[[], _T]) -> _T:
    """Run one step of a checkout; git's failure becomes a `CheckoutError` naming the step."""
    try:
        return action()
    except GitError as exc:
        raise CheckoutError(f"{name} failed: {exc}") from None


def remove(dest: Path) -> None:
    """Delete a working tree made by `checkout` (nothing else references it); no error if
    it is already gone."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
