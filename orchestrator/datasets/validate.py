"""Checks for the names users type: projects, dataset names, tags, semantic versions."""

from __future__ import annotations

import re
from collections.abc import Iterable

from orchestrator.errors import UserError

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_TAG = re.compile(r"^[^\s,]{1,128}$")
# Control characters, and the bidirectional overrides and isolates that make a name read as
# something else (`invoice\u202egpj.exe` shows as `invoiceexe.jpg`).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

FIRST_VERSION = (1, 0, 0)


def parse_version(text: str, *, what: str = "--version") -> tuple[int, int, int]:
    """`1.2.3` → (1, 2, 3); anything else is a `UserError` naming the argument."""
    match = _SEMVER.match(text.strip())
    if not match:
        raise UserError(f"{what}: {text!r} is not a semantic version such as 1.0.0")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def format_version(parts: tuple[int, int, int]) -> str:
    return ".".join(str(p) for p in parts)


def next_version(existing: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The patch after the highest existing version (1.0.0 → 1.0.1); 1.0.0 for the first."""
    if not existing:
        return FIRST_VERSION
    major, minor, patch = max(existing)
    return major, minor, patch + 1


def check_project(path: str) -> str:
    """A project path: `/`-separated non-empty segments, no control characters."""
    clean = path.strip()
    segments = clean.split("/")
    if not clean or any(not s.strip() for s in segments) or _CONTROL.search(clean):
        raise UserError(
            f"--project: {path!r} is not a project path such as Team/Area/project "
            "(non-empty parts separated by '/')"
        )
    if len(clean) > 512:
        raise UserError("--project: a project path has at most 512 characters")
    return "/".join(s.strip() for s in segments)


def check_name(name: str, *, what: str = "--name") -> str:
    clean = name.strip()
    if not clean or "/" in clean or _CONTROL.search(clean) or len(clean) > 256:
        raise UserError(
            f"{what}: {name!r} is not a valid name (1-256 characters, no '/', no control or "
            "bidirectional-override characters)"
        )
    return clean


def check_tag(tag: str) -> str:
    if not _TAG.match(tag) or _CONTROL.search(tag):
        raise UserError(f"tag {tag!r} is not valid (1-128 characters, no spaces or commas)")
    return tag


def check_tags(tags: Iterable[str]) -> list[str]:
    """The tags to add, checked, sorted, once each; at least one."""
    wanted = sorted({check_tag(t) for t in tags})
    if not wanted:
        raise UserError("name at least one tag")
    return wanted
