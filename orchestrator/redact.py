"""Remove credentials from URLs and mappings before anything is printed or logged."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

REDACTED = "***"

# Words that make a variable or field name a secret's name (compared word by word, so that
# TOKENIZERS_PARALLELISM or NUM_PASSES are not taken for secrets).
_SECRET_WORDS = {
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "credential",
    "credentials",
    "apikey",
    "auth",
    "passphrase",
}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")}


def is_secret_name(name: str) -> bool:
    """True when a variable or field called `name` holds a secret by convention."""
    words = [
        w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()) if w
    ]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def redact_url(url: str) -> str:
    """Hide the password of `scheme://user:password@host/...` and secret query parameters.

    Only the secret parts are replaced, in place: rebuilding the URL from its parts would turn
    `sqlite:////abs/path` into `sqlite://abs/path` (a host called "abs").
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    out = url
    if "@" in parts.netloc:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        if sep:
            out = out.replace(f"//{parts.netloc}", f"//{user}:{REDACTED}@{hostport}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if is_secret_name(k) else v) for k, v in pairs], safe="*"
            )
            out = out.replace(f"?{parts.query}", f"?{query}", 1)
    return out


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
