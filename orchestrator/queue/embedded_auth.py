"""The embedded Redis's password, and its URL with the password in it.

A job runs as the worker's user, and Landlock does not govern `connect()` to a pathname unix
socket: the socket's permissions do not keep a job out of the embedded server. Its password
does. It lives in `RETRAIN_HOME/redis/password` (0600, in the home the job sandbox hides), is
handed to redis-server on its standard input (never its command line, which `ps` shows), and
is never printed (`orchestrator.redact` hides it in URLs). `redis.json` says where the
password is, never what it is.

No pydantic here: `retrain status` reads the embedded server's URL through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote

STATE_FILE = "redis.json"
PASSWORD_FILE = "redis/password"  # noqa: S105 (where it is, not what)
"""Relative to RETRAIN_HOME."""


def password_path(home: Path) -> Path:
    return home / PASSWORD_FILE


def read_password(home: Path) -> str | None:
    """This home's embedded Redis password; None if it has none (yet)."""
    try:
        return password_path(home).read_text().strip() or None
    except OSError:
        return None


def ensure_password(home: Path) -> str:
    """The password, made first if there is none: written aside in a file created 0600 with
    O_EXCL (never readable by anyone else, even for a moment), then renamed into place."""
    existing = read_password(home)
    if existing:
        return existing
    path = password_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    aside = path.with_name(path.name + ".tmp")
    aside.unlink(missing_ok=True)
    password = secrets.token_hex(32)
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
        out.flush()
        os.fsync(out.fileno())
    aside.replace(path)
    return password


def with_password(url: str, password: str) -> str:
    """`unix:///path` as `unix://:PASSWORD@/path`, which redis-py and `wakeup.publish_plain`
    both understand."""
    return "unix://:" + quote(password, safe="") + "@" + url.removeprefix("unix://")


def state_url(home: Path) -> str | None:
    """The URL that `redis.json` records, with the password when the server has one; no check
    that the server runs (`orchestrator.queue.connection.embedded_url` checks)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        state = json.loads((home / STATE_FILE).read_text())
        url = str(state["url"])
        if not state.get("password_file"):
            return url  # a server from before passwords: it takes none
        password = read_password(home)
        return with_password(url, password) if password else None
    return None
