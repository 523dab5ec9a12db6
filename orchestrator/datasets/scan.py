"""Turn what the user names on the command line (files, folders, globs) into dataset files.

A folder contributes its contents relative to itself; a file contributes its base name; both
land under `--dataset-path` when given. One rule for symlinks, whatever the user named: a
symlink that resolves outside the folder it was named from is refused, since it would
silently pull in data from elsewhere on the machine. The folder is the named folder itself,
a named file's own folder, or a glob's fixed leading folder (`data/*.csv`: `data`).
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import PathError
from orchestrator.paths import check_inside, join_prefix

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class LocalFile:
    """A file on this machine and the dataset path it will have."""

    path: str
    source: Path
    size: int
    mtime_ns: int


def collect(args: Sequence[str], dataset_path: str | None = None) -> list[LocalFile]:
    """Resolve `args` (paths or globs) to files, sorted by dataset path.

    Raises `PathError` naming the argument for anything missing, unreadable, escaping through
    a symlink, or two different sources that would land on the same dataset path.
    """
    found: dict[str, LocalFile] = {}
    for arg in args:
        for source, rel in _expand(arg):
            target = join_prefix(dataset_path, rel)
            previous = found.get(target)
            if previous is not None and previous.source != source:
                raise PathError(
                    f"{previous.source} and {source} would both be stored as {target!r}"
                )
            found[target] = _local_file(target, source)
    return [found[p] for p in sorted(found)]


def collect_folder(folder: Path, dataset_path: str | None = None) -> list[LocalFile]:
    """Every file below `folder`, relative to it (for `sync`)."""
    if not folder.is_dir():
        raise PathError(f"--folder: {folder} is not a directory")
    files = [_local_file(join_prefix(dataset_path, rel), src) for src, rel in _walk(folder)]
    return sorted(files, key=lambda f: f.path)


def _expand(arg: str) -> list[tuple[Path, str]]:
    expanded = os.path.expanduser(arg)
    if _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(expanded, recursive=True))
        if not matches:
            raise PathError(f"--files: nothing matches {arg!r}")
        root = _glob_root(expanded)
    else:
        matches = [expanded]
        root = Path(expanded).absolute().parent
    out: list[tuple[Path, str]] = []
    for match in matches:
        path = Path(match)
        if path.exists():  # a symlink anywhere below the root counts, not only the last part
            check_inside(root, path.absolute())
        if path.is_dir():
            out.extend(_walk(path))
        elif path.is_file():
            out.append((path.absolute(), path.name))
        elif os.path.lexists(path):
            kind = "a broken symlink" if path.is_symlink() else "not a regular file"
            raise PathError(f"--files: {path} is {kind}")
        else:
            raise PathError(f"--files: no such file or directory: {path}")
    return out


def _glob_root(pattern: str) -> Path:
    """The folder a glob is anchored in: its leading parts without glob characters."""
    parts = Path(pattern).parts
    fixed = [p for p in itertools.takewhile(lambda p: not (_GLOB_CHARS & set(p)), parts)]
    return Path(*fixed).absolute() if fixed else Path.cwd()


def _walk(root: Path) -> list[tuple[Path, str]]:
    """Files below `root` as (absolute path, path relative to root), following symlinks that
    stay inside `root` and refusing those that leave it."""
    root = root.absolute()
    out: list[tuple[Path, str]] = []
    seen_dirs: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        current = Path(dirpath)
        real = current.resolve()
        if real in seen_dirs:  # a symlink loop inside the folder: walk each real dir once
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        for name in dirnames + filenames:
            entry = current / name
            if entry.is_symlink():
                if not entry.exists():
                    raise PathError(f"{entry} is a broken symlink")
                check_inside(root, entry)
        for name in sorted(filenames):
            entry = current / name
            if not entry.is_file():
                raise PathError(f"{entry} is not a regular file")
            out.append((entry, entry.relative_to(root).as_posix()))
    return out


def _local_file(target: str, source: Path) -> LocalFile:
    try:
        stat = source.stat()
    except OSError as exc:
        raise PathError(f"cannot read {source}: {exc.strerror}") from None
    if not os.access(source, os.R_OK):
        raise PathError(f"cannot read {source}: permission denied")
    return LocalFile(target, source, stat.st_size, stat.st_mtime_ns)
