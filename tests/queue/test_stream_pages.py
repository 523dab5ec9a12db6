"""A live stream (a run's log, its metrics) is read a page at a time: anyone with the workers'
Redis access can append millions of tiny entries to one (25 MB in Redis were 800 MB in
`retrain logs` read at once), so a reader never holds more than a page of replies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from orchestrator.cli.live import stream_pages
from orchestrator.queue.plain import PlainRedis
from tests.tasks.conftest import machine_redis_url


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(machine_redis_url())
    r.flushdb()
    try:
        yield r
    finally:
        r.flushdb()
        r.close()


def test_every_entry_once_in_pages(client: redis.Redis) -> None:
    with client.pipeline(transaction=False) as pipe:
        for i in range(2_500):
            pipe.xadd("s", {"line": str(i)}, id=f"{i + 1}-0")
        pipe.execute()
    client.xadd("s", {"line": "max"}, id="2501-18446744073709551615")
    client.xadd("s", {"line": "next"}, id="2502-0")
    plain = PlainRedis.of(machine_redis_url())
    assert plain is not None
    try:
        for reader in (plain, client):
            pages = list(stream_pages(reader, "s", page=1000))
            assert [len(p) for p in pages] == [1000, 1000, 502]
            lines = [f[b"line"] for p in pages for _id, f in p]
            assert lines == [str(i).encode() for i in range(2_500)] + [b"max", b"next"]
            after = pages[0][-1][0]
            rest = [e for p in stream_pages(reader, "s", after, page=1000) for e in p]
            assert len(rest) == 1502 and rest[0][1][b"line"] == b"1000"
    finally:
        plain.close()


def test_a_missing_stream_is_no_page(client: redis.Redis) -> None:
    assert list(stream_pages(client, "nothing")) == []


def test_nothing_comes_after_the_largest_id(client: redis.Redis) -> None:
    """Anyone with the workers' Redis access can add an entry with the largest id there is:
    the reader asked for the entries after it with an id Redis refuses, so `retrain logs`
    of a full page, and every `logs -f` and `metrics -f` at the run's end, stopped with
    "cannot read the log from Redis: ERR Invalid stream ID" (attacker pass 3)."""
    top = "18446744073709551615-18446744073709551615"
    with client.pipeline(transaction=False) as pipe:
        for i in range(999):
            pipe.xadd("s", {"line": str(i)}, id=f"{i + 1}-0")
        pipe.execute()
    client.xadd("s", {"line": "top"}, id=top)
    plain = PlainRedis.of(machine_redis_url())
    assert plain is not None
    try:
        for reader in (plain, client):
            pages = list(stream_pages(reader, "s", page=1000))
            assert [len(p) for p in pages] == [1000]
            assert list(stream_pages(reader, "s", top.encode(), page=1000)) == []
            assert list(stream_pages(reader, "s", top, page=1000)) == []
    finally:
        plain.close()
