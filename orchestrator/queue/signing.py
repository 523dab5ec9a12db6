"""HMAC signatures for what crosses Redis between trusted parties: job payloads (written by
the scheduler or the CLI, run by workers) and reports (written by workers, applied by the
scheduler). The key is the worker secret (`RETRAIN_WORKER_SECRET`), which the scheduler, the
CLI and the workers hold and jobs never see; holding Redis access alone, nobody can make a
signature that verifies. Stdlib only: every worker process loads this.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

SIGNATURE = "signature"
"""The payload field that carries its signature."""


def sign(secret: str, data: bytes) -> str:
    """The hex HMAC-SHA256 of `data` under `secret`."""
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def verify(secret: str, data: bytes, signature: Any) -> bool:
    """True when `signature` is `data`'s signature under `secret` (in constant time)."""
    return isinstance(signature, str) and hmac.compare_digest(sign(secret, data), signature)


def canonical(payload: Mapping[str, Any]) -> bytes:
    """The bytes a payload's signature covers: its JSON with sorted keys, without the
    signature field itself, so RQ's own (de)serialization cannot change what is verified."""
    body = {k: v for k, v in payload.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign_payload(secret: str | None, payload: Mapping[str, Any]) -> dict[str, Any]:
    """`payload` with its signature (unchanged when no secret is set)."""
    signed = {k: v for k, v in payload.items() if k != SIGNATURE}
    if secret:
        signed[SIGNATURE] = sign(secret, canonical(signed))
    return signed


def check_payload(secret: str | None, payload: Mapping[str, Any]) -> str | None:
    """Why a worker must refuse `payload`, or None when it may run it. A worker with a secret
    runs only payloads signed with it; a worker without one refuses a signed payload (a
    secret exists, and this worker could not check it: it was started without it)."""
    if not secret:
        if SIGNATURE in payload:
            return (
                "the job's payload is signed, but this worker has no worker secret to check "
                "it (set RETRAIN_WORKER_SECRET on the worker)"
            )
        return None
    if SIGNATURE not in payload:
        return "the job's payload is not signed (was it made by retrain?)"
    if not verify(secret, canonical(payload), payload[SIGNATURE]):
        return "the job's payload signature does not verify (made without the worker secret)"
    return None
