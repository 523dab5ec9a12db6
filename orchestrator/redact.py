"""Remove credentials from URLs and mappings before anything is printed or logged."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"

# Names whose values are secrets wherever they appear (settings, query strings, env vars).
_SECRET_NAME = re.compile(
    r"(pass(word|wd)?|secret|token|credential|api[_-]?key|access[_-]?key|private[_-]?key|auth)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """True when a variable or field called `name` holds a secret by convention."""
    return bool(_SECRET_NAME.search(name))


def redact_url(url: str) -> str:
    """Hide the password of `scheme://user:password@host/...` and secret query parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{hostport}" if sep else f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `values` with secret-named values and URL passwords hidden."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            out[key] = None
        elif is_secret_name(key):
            out[key] = REDACTED
        elif isinstance(value, str) and "://" in value:
            out[key] = redact_url(value)
        else:
            out[key] = value
    return out
