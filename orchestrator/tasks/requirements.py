"""Pinned requirements: every line `name==version` (extras, markers and hashes allowed).

A task's environment must be reproducible, so ranges are refused where they enter, naming the
file and line. `resolve()` pins a loose file with uv's resolver instead.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from orchestrator.errors import UserError

_ALLOWED_OPTIONS = ("--hash=",)
_NEEDS_BUILD = re.compile(r"(?:attempted to build|Wheels are required for) `([^`]+)`")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of each requirement, with `\\` continuations joined and comments
    removed."""
    out: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        if buffer.strip():
            out.append((start, buffer.strip()))
        buffer = ""
    if buffer.strip():
        out.append((start, buffer.strip()))
    return out


def check_pinned(lines: Iterable[tuple[int, str]], source: str) -> list[str]:
    """Normalized pinned lines, or a `UserError` naming `source:line` for the first that is
    not an exact pin."""
    pinned: list[str] = []
    for number, line in lines:
        where = f"{source}:{number}"
        words = line.split()
        spec_words = [w for w in words if not w.startswith("--")]
        options = [w for w in words if w.startswith("--")]
        bad = [o for o in options if not o.startswith(_ALLOWED_OPTIONS)]
        if line.startswith(("-r", "-c", "-e", "--requirement", "--constraint", "--editable")):
            raise UserError(
                f"{where}: {line!r}: include files and editable installs are not "
                "reproducible; list the pinned packages themselves"
            )
        if bad:
            raise UserError(f"{where}: option {bad[0]!r} is not supported in pinned requirements")
        try:
            requirement = Requirement(" ".join(spec_words))
        except InvalidRequirement as exc:
            raise UserError(f"{where}: {line!r} is not a requirement: {exc}") from None
        specifiers = list(requirement.specifier)
        exact = (
            len(specifiers) == 1
            and specifiers[0].operator in ("==", "===")
            and "*" not in specifiers[0].version
        )
        if requirement.url is None and not exact:
            raise UserError(
                f"{where}: {line!r} is not pinned; use name==version, or let retrain pin the "
                "file with --resolve (uv's resolver)"
            )
        pinned.append(" ".join([str(requirement), *sorted(options)]))
    return pinned


def parse_text(text: str, source: str) -> list[str]:
    return check_pinned(_logical_lines(text), source)


def read_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"--requirements: cannot read {path}: {exc.strerror}") from None
    return parse_text(text, str(path))


def resolve(path: Path, python: str | None = None) -> list[str]:
    """Pin a loose requirements file with `uv pip compile` (uv ships as a Python package),
    never building a package to read its metadata: that would run the package's build code
    on this machine (`--no-build`)."""
    try:
        from uv import find_uv_bin

        uv = find_uv_bin()
    except (ImportError, FileNotFoundError):
        raise UserError("--resolve needs uv: pip install uv") from None
    command = [
        uv,
        "pip",
        "compile",
        str(path),
        "--quiet",
        "--no-header",
        "--no-annotate",
        # The pins go to stdout (uv's default); `--output-file -` with --quiet prints nothing.
        "--no-build",
    ]
    if python:
        command += ["--python-version", python]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()
        found = _NEEDS_BUILD.search(result.stderr)
        if found:
            raise UserError(
                f"--resolve: uv could not pin {path}: {found.group(1)} has no wheel, and "
                "reading its metadata would run its build code on this machine; pin it by "
                "hand (workers then need --allow-builds to install it)"
            )
        raise UserError(f"--resolve: uv could not pin {path}: {message[-1] if message else '?'}")
    return parse_text(result.stdout, f"{path} (resolved)")
