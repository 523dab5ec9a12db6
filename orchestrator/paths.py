"""Dataset-relative paths: normalized POSIX paths that can never leave their root."""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path, PurePosixPath

from orchestrator.errors import PathError


def normalize_relpath(rel: str, *, what: str = "dataset path") -> str:
    """Return `rel` as a clean relative POSIX path (`a/b.txt`), or raise `PathError`.

    Refused: empty paths, absolute paths (`/x`, `C:/x`), `..` components, NUL bytes and
    backslashes (which mean a separator on one OS and a name character on another).
    """
    if not rel or "\x00" in rel or "\\" in rel:
        raise PathError(f"invalid {what} {rel!r}")
    # `C:/x` is absolute on Windows; `x:y.csv` is an ordinary POSIX name.
    if rel.startswith("/") or re.match(r"^[A-Za-z]:/", rel):
        raise PathError(f"{what} {rel!r} must be relative")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts:
        raise PathError(f"invalid {what} {rel!r}")
    if ".." in parts:
        raise PathError(f"{what} {rel!r} escapes the dataset root")
    return "/".join(parts)


def join_prefix(prefix: str | None, rel: str) -> str:
    """`prefix/rel`, both normalized; an empty or `.` prefix means the root."""
    if prefix in (None, "", ".", "/"):
        return normalize_relpath(rel)
    return normalize_relpath(posixpath.join(normalize_relpath(prefix), rel))


def safe_join(root: Path, rel: str) -> Path:
    """`root / rel` for a normalized relative path, checked to stay inside `root`."""
    clean = normalize_relpath(rel)
    target = root.joinpath(*PurePosixPath(clean).parts)
    if os.path.commonpath([root.absolute(), target.absolute()]) != str(root.absolute()):
        raise PathError(f"dataset path {rel!r} escapes {root}")
    return target


def check_inside(root: Path, path: Path) -> None:
    """Raise `PathError` when `path`, with symlinks resolved, lies outside `root`."""
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise PathError(f"{path} is a symlink that points outside {root} (to {real})")
