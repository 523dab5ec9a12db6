"""Sub-second detection: the store publishes after committing events; the scheduler listens.

Publishing is best effort. A command that tags a dataset does not start a Redis server just
to say so, and a lost message costs at most one timed poll (the safety net, every 5 s).

The announcement is one `PUBLISH` with no data in it, so a command that queues nothing sends
it over a plain socket (`redis://` and `unix://` URLs) instead of importing redis-py, which
costs a command more than everything else it does; TLS and any URL option it does not know go
through redis-py.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.queue import keys
from orchestrator.queue.plain import PlainRedis
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from redis import Redis


TIMEOUT_S = 1.0


def publisher(settings: Settings) -> Callable[[], None]:
    """A callback that announces committed events, connecting on first use."""
    client: list[Redis] = []

    def publish() -> None:
        from orchestrator.queue.connection import embedded_url

        if not client:
            try:
                url = settings.redis_url or embedded_url(settings, start=False)
                # A process that has redis-py loaded anyway (a daemon) keeps one pooled client.
                if url is None or ("redis" not in sys.modules and publish_plain(url)):
                    return
            except OSError:
                return
        else:
            url = ""
        from redis import Redis, RedisError

        try:
            if not client:
                timeout = TIMEOUT_S
                client.append(
                    Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
                )
            client[0].publish(channel_of(client[0]), b"1")
        except (RedisError, OSError):
            return

    return publish


def publish_plain(url: str) -> bool:
    """Announce on `url`'s channel over a socket of our own; False when the URL needs
    redis-py (TLS, options other than `db`). Raises OSError when Redis is unreachable."""
    client = PlainRedis.of(url, select=False)
    if client is None:
        return False
    try:
        (reply,) = client.execute(
            [["PUBLISH", keys.events_channel(client.db), "1"]], timeout=TIMEOUT_S
        )
    finally:
        client.close()
    if isinstance(reply, OSError):  # an error reply (a wrong password, say)
        raise reply
    return True


def channel_of(redis: Redis) -> str:
    """The wake-up channel of the database this client uses."""
    return keys.events_channel(int(redis.connection_pool.connection_kwargs.get("db") or 0))


class Listener:
    """A background thread that sets `woken` whenever events are announced."""

    def __init__(self, redis: Redis, woken: threading.Event | None = None) -> None:
        self.redis = redis
        self.woken = woken or threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wakeup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        from redis import RedisError

        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(channel_of(self.redis))
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=0.5) is not None:
                        self.woken.set()
            except (RedisError, OSError):
                self._stop.wait(1.0)  # Redis is away; the timed poll carries on meanwhile
            finally:
                pubsub.close()
