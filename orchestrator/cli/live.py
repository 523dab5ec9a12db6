"""A run's live streams (its log, its metrics) as `retrain logs` and `retrain metrics` read
them: once, over a socket of our own (`queue/plain.py`), a page at a time; or followed, with
redis-py, through a Redis that drops the connection for a while. Entries are anyone's to
append (the workers' Redis ACL): nothing in them is executed, and no read takes a whole
stream at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from orchestrator.cli.context import runtime

T = TypeVar("T")
Entry = tuple[str, Any]
"""A stream entry: its id as text, its fields (bytes keys and values, as Redis gives them)."""


@contextmanager
def stream_reader(follow: bool) -> Iterator[Any]:
    """A client to read a run's live stream (its log, its metrics). To follow it, redis-py:
    a follow lasts as long as the run, and redis-py reconnects when Redis drops the
    connection (a restart, a proxy's idle timeout). To read it once, a socket of our own
    (`queue/plain.py`: XRANGE and XREVRANGE with redis-py's reply shapes, nothing in them
    executed), unless the URL needs redis-py (TLS, options)."""
    from orchestrator.queue.connection import embedded_url
    from orchestrator.queue.plain import PlainRedis

    if follow:
        yield runtime().redis
        return
    settings = runtime().settings
    url = settings.redis_url or embedded_url(settings, start=True)
    plain = PlainRedis.of(url) if url else None
    if plain is None:
        yield runtime().redis
        return
    try:
        yield plain
    finally:
        plain.close()


RECONNECT_S = 60.0
"""How long a follower (`logs -f`, `metrics -f`) waits for Redis to answer again."""


def patiently(read: Callable[[], T]) -> T:
    """`read()` for a follower: while Redis is unreachable or drops the connection (a
    restart, a proxy's idle timeout), again each second for up to `RECONNECT_S`, then its
    error. The caller's cursor is unchanged meanwhile, so nothing is skipped or repeated."""
    import time

    from orchestrator.errors import ServiceUnavailable

    deadline = time.monotonic() + RECONNECT_S
    while True:
        try:
            return read()
        except ServiceUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def follow_read(redis: Any, stream: str, after: str, what: str) -> list[Entry]:
    """The entries after `after`, waiting up to a second for new ones (XREAD with BLOCK, on
    redis-py); a Redis error as one line naming `what` is read."""
    from orchestrator.queue.plain import PlainRedis
    from orchestrator.queue.streams import entries

    assert not isinstance(redis, PlainRedis)  # a follow reads through redis-py
    try:
        raw = entries(redis.xread({stream: after}, count=PAGE, block=1000))
    except Exception as exc:  # redis-py's errors; the CLI prints one line
        raise _unreadable(what, exc) from None
    return [(text(entry_id), fields) for entry_id, fields in raw]


def newest(redis: Any, stream: str, count: int, what: str) -> list[Entry]:
    """The newest `count` entries, oldest first (XREVRANGE with COUNT)."""
    try:
        raw = redis.xrevrange(stream, "+", "-", count=count)
    except Exception as exc:
        raise _unreadable(what, exc) from None
    return [(text(entry_id), fields) for entry_id, fields in reversed(raw)]


def pages(redis: Any, stream: str, what: str, after: str | None = None) -> Iterator[list[Entry]]:
    """The entries after `after` (all by default), a page at a time (`stream_pages`)."""
    found = stream_pages(redis, stream, after)
    while True:
        try:
            raw = next(found, None)
        except Exception as exc:  # redis-py's errors; the CLI prints one line
            raise _unreadable(what, exc) from None
        if raw is None:
            return
        yield [(text(entry_id), fields) for entry_id, fields in raw]


def field(fields: Any, name: str) -> str:
    """A field of an entry as text ("" when it has none)."""
    return text(fields.get(name, fields.get(name.encode(), b"")))


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _unreadable(what: str, exc: Exception) -> Exception:
    from orchestrator.errors import ServiceUnavailable

    return ServiceUnavailable(f"cannot read {what} from Redis: {exc}")


PAGE = 1000
"""Entries a reader asks for at once (`stream_pages`)."""


def stream_pages(
    redis: Any, stream: str, after: Any = None, page: int = PAGE
) -> Iterator[list[Any]]:
    """The entries of `stream` after the id `after` (all of them by default), `page` at a time
    (XRANGE with COUNT, on redis-py or `queue/plain.py` alike): a live stream is anyone's to
    append to (the workers' Redis ACL), and one of a million tiny entries read whole cost
    30 times its size in Redis. Redis's errors are raised as they are."""
    start = "-" if after is None else _next_id(after)
    while start is not None:
        entries = redis.xrange(stream, start, "+", count=page)
        if not entries:
            return
        yield entries
        if len(entries) < page:
            return
        start = _next_id(entries[-1][0])


def _next_id(entry_id: Any) -> str | None:
    """The smallest stream id after `entry_id` (Redis before 6.2 has no exclusive `(` bound);
    None after the largest id there is, which anyone with the workers' Redis access can give
    an entry (Redis refuses an id past it)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    if int(seq or 0) + 1 < 1 << 64:
        return f"{ms}-{int(seq or 0) + 1}"
    if int(ms) + 1 < 1 << 64:
        return f"{int(ms) + 1}-0"
    return None
