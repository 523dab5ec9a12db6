"""Remove credentials from URLs and mappings before anything is printed or logged."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

REDACTED = "***"

# The rule for a secret's name, compared word by word after splitting on anything but letters
# and digits and at camelCase humps (so `wandbApiKey` is wandb, api, key):
# - a word that is, starts with or ends with a secret's stem: `DB_PASS`, `PGPASSWORD`,
#   `GITHUBTOKEN`, `MYAPIKEY`, `CLIENT_SECRETS`, `AUTHORIZATION`;
# - or two words that name a key together: `ACCESS_KEY`, `SSH_KEY`, `SIGNING_KEY`.
# Counting words are not secrets: `MAX_TOKENS`, `TOKENIZERS_PARALLELISM`, `NUM_PASSES`.
_SECRET_WORDS = {"pass", "pwd", "auth", "cookie", "jwt", "dsn"}
"""Secret only as a whole word (`DB_PASS`, but not `PASSES` or `AUTHOR`)."""
_SECRET_STEMS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "credential",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "authorization",
    "authtoken",
    "token",
)
"""Secret when a word is, ends with, or (but for `token`) starts with one of these."""
_COUNTING = re.compile(r"^tokens$|^tokeni[sz]")
_KEY_OWNERS = {"api", "access", "private", "secret", "ssh", "signing", "encryption", "session",
               "master", "client", "account", "license", "gpg", "pgp", "deploy"}


def _words(name: str) -> list[str]:
    humped = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", humped.lower()) if w]


def is_secret_name(name: str) -> bool:
    """True when a variable or field called `name` holds a secret by convention (the rule
    above; docs/architecture.md, "Trust boundary", states it for users)."""
    words = _words(name)
    for word in words:
        if word in _SECRET_WORDS:
            return True
        if _COUNTING.match(word):
            continue
        for stem in _SECRET_STEMS:
            if word == stem or word.endswith(stem):
                return True
            if stem != "token" and word.startswith(stem):
                return True
    return any(a in _KEY_OWNERS and b in ("key", "keys") for a, b in itertools.pairwise(words))


_URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]*:[^/\s@]*@")


def has_url_credentials(text: str) -> bool:
    """True when `text` holds a URL with a password (`scheme://user:password@host`)."""
    return bool(_URL_CREDENTIALS.search(text))


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
