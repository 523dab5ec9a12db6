"""Reading Redis streams: one shape for XREAD/XREADGROUP replies, whichever protocol the
connection speaks. Standard library only (the CLI's fast paths import it)."""

from __future__ import annotations

from typing import Any


def entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) entries of an XREAD or XREADGROUP reply, in order: RESP3 gives
    {stream: [entries]} (redis-py wraps each in a list), RESP2 [[stream, entries], ...]."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [(e[0], e[1]) for batch in reply.values() for e in batch[0]]
    return [(e[0], e[1]) for _stream, batch in reply for e in batch]
