"""Git, always as a subprocess with an argument list (never a shell), never prompting.

`Mirror` keeps one bare mirror per repository URL in a cache folder, fetched only when a
commit is missing; registration uses it to check that the entry point exists at the recorded
commit, and workers check out from it. `capture()` records a local checkout: where it lives,
its HEAD commit and its uncommitted changes (untracked files included).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import UserError
from orchestrator.redact import redact_url

GIT_TIMEOUT_S = 600
HEAD_CACHE_S = 5.0
"""How long a branch's resolved commit is reused within one process."""
MAX_DIFF_BYTES = 50 * 1024 * 1024


class GitError(UserError):
    """A git command failed; the message is git's own last line, credentials removed."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # fail instead of waiting for a password nobody types
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    env["LC_ALL"] = "C"
    return env


def git(
    *args: str, cwd: Path | None = None, check: bool = True, text: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run git; a failure becomes a `GitError` with git's message (credentials redacted)."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=text,
            env=_env(),
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise GitError("git is not installed (it is needed to record and check out code)") from None
    if check and result.returncode != 0:
        lines = [line for line in str(result.stderr).strip().splitlines() if line.strip()]
        message = lines[-1] if lines else f"git {args[0]} failed"
        raise GitError(_redact_text(message.removeprefix("fatal: ")))
    return result


def _redact_text(text: str) -> str:
    return re.sub(r"\b[a-z][a-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), text)


def safe_url(repo: str) -> str:
    """The repository URL without any credential: a task is stored and shown to everyone, so
    workers bring their own. `https://token@host/x` -> `https://host/x` (a token is often
    the user part); `ssh://git:secret@host/x` -> `ssh://git@host/x` (ssh needs the user)."""
    if "://" not in repo:
        return repo
    parts = urlsplit(repo)
    if "@" not in parts.netloc:
        return repo
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = host if parts.scheme in ("http", "https") else f"{userinfo.partition(':')[0]}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def normalize_repo(repo: str, base: Path | None = None) -> str:
    """A URL as given (credentials removed), or a local path made absolute."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", repo) or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        return safe_url(repo)
    path = Path(repo).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    if not path.exists():
        raise UserError(f"--repo: {repo} is neither a URL nor an existing folder")
    return str(path.resolve())


def ls_remote(repo: str, ref: str) -> str | None:
    """The commit a branch or tag name points at in `repo`, or None if there is none."""
    patterns = [ref] if ref == "HEAD" else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    out = git("ls-remote", "--", repo, *patterns).stdout
    for line in out.splitlines():
        commit, _, name = line.partition("\t")
        if name in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
            return commit
    return None


class Mirror:
    """Bare mirrors of repositories under `root`, one per URL, safe across processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._heads: dict[tuple[str, str], tuple[float, str]] = {}

    def path(self, repo: str) -> Path:
        key = hashlib.sha256(repo.encode()).hexdigest()[:24]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", repo.rstrip("/").rsplit("/", 1)[-1])[:40]
        return self.root / f"{name}-{key}.git"

    def ensure(self, repo: str, commit: str | None = None) -> Path:
        """The mirror of `repo`, cloned on first use and fetched when `commit` is missing."""
        from filelock import FileLock  # ~40 ms: not for `head_of` (`task run`'s ls-remote)

        mirror = self.path(repo)
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(mirror) + ".lock"):
            if not (mirror / "HEAD").exists():
                git("clone", "--mirror", "--quiet", "--", repo, str(mirror))
            elif commit is None or not self.has_commit(mirror, commit):
                git("remote", "update", "--prune", cwd=mirror)
        return mirror

    def head_of(self, repo: str, ref: str) -> str | None:
        """The commit `ref` (a branch, tag or HEAD) points at in `repo` now, asked of the
        repository itself with `git ls-remote` (no fetch). Answers are reused for
        `HEAD_CACHE_S` seconds, so a burst of runs of one template asks once."""
        cached = self.cached_head(repo, ref)
        if cached is not None:
            return cached
        commit = ls_remote(repo, ref)
        if commit is not None:
            self._heads[(repo, ref)] = (time.monotonic(), commit)
        return commit

    def cached_head(self, repo: str, ref: str) -> str | None:
        """`head_of`'s answer if it is fresh, without asking the repository."""
        cached = self._heads.get((repo, ref))
        if cached is not None and time.monotonic() - cached[0] < HEAD_CACHE_S:
            return cached[1]
        return None

    @staticmethod
    def has_commit(mirror: Path, commit: str) -> bool:
        return (
            git("cat-file", "-e", f"{commit}^{{commit}}", cwd=mirror, check=False).returncode == 0
        )

    @staticmethod
    def resolve(mirror: Path, ref: str) -> str:
        """A branch, tag or (abbreviated) commit to a full commit hash."""
        result = git(
            "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=mirror, check=False
        )
        if result.returncode != 0:
            raise GitError(f"{ref!r} is not a branch, tag or commit of the repository")
        return result.stdout.strip()

    @staticmethod
    def has_path(mirror: Path, commit: str, path: str) -> bool:
        return git("cat-file", "-e", f"{commit}:{path}", cwd=mirror, check=False).returncode == 0


@dataclass(frozen=True)
class Capture:
    """A local checkout as recorded for a task."""

    repo: str
    commit: str
    branch: str | None
    diff: str | None
    pushed: bool


def capture(directory: Path) -> Capture:
    """Record `directory`'s repository: the remote URL when HEAD is pushed there (else the
    local path, which only this machine can reach), HEAD, and uncommitted changes."""
    top = Path(git("rev-parse", "--show-toplevel", cwd=directory).stdout.strip())
    commit = git("rev-parse", "HEAD", cwd=top).stdout.strip()
    branch = git("symbolic-ref", "--short", "-q", "HEAD", cwd=top, check=False).stdout.strip()
    remote = git("config", "--get", "remote.origin.url", cwd=top, check=False).stdout.strip()
    # Pushed means origin has it: the URL recorded is origin's, so that is what a worker
    # will fetch from.
    pushed = bool(remote) and bool(
        git(
            "branch", "-r", "--contains", commit, "--list", "origin/*", cwd=top, check=False
        ).stdout.strip()
    )
    repo = safe_url(remote) if pushed else str(top)
    return Capture(repo, commit, branch or None, working_diff(top), pushed)


def working_diff(top: Path) -> str | None:
    """`git diff HEAD` plus every untracked, not ignored file, as one patch `git apply` takes."""
    parts = [git("diff", "--binary", "HEAD", cwd=top).stdout]
    untracked = git("ls-files", "--others", "--exclude-standard", "-z", cwd=top).stdout
    for name in filter(None, untracked.split("\0")):
        # --no-index exits 1 when the files differ, which is the point here.
        parts.append(
            git(
                "diff", "--binary", "--no-index", "--", "/dev/null", name, cwd=top, check=False
            ).stdout
        )
    diff = "".join(parts)
    if len(diff.encode()) > MAX_DIFF_BYTES:
        raise UserError(
            f"the uncommitted changes in {top} exceed {MAX_DIFF_BYTES >> 20} MiB; "
            "commit them (or ignore large files) before recording the task"
        )
    return diff or None
