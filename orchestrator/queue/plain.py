"""Redis over a socket of our own, for the commands that must start fast: redis-py's import
costs about 80 ms, more than the rest of `retrain status --json`. Only what those commands
send: a few read commands, pipelined, `PUBLISH` (`wakeup.publish_plain`) and `task run`'s
job (`plainjob`). Replies are
parsed as RESP2 into bytes, ints, lists and None, exactly what redis-py returns without
`decode_responses`; nothing in them is unpickled or executed.

`PlainRedis.of(url)` is None for a URL it does not serve (TLS, options other than `db`):
the caller then uses redis-py.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

TIMEOUT_S = 5.0

MAX_REPLY_BYTES = 64 << 20
"""The most of one bulk string kept: a longer one (a Redis value anyone with write access to
its key may make up to 512 MiB) is read past and replaced by `TooLarge`, so the rest of the
reply, and of the pipeline, is still read."""
MAX_LINE_BYTES = 64 << 10
"""A reply's header line (`+OK`, `$123`, `*4`, an error) is never longer."""


class TooLarge(bytes):
    """A bulk string over `MAX_REPLY_BYTES`, not read: it reads as `(N bytes, not read)`."""

    size: int

    def __new__(cls, size: int) -> TooLarge:
        made = super().__new__(cls, f"({size} bytes, not read)".encode())
        made.size = size
        return made


class ReplyError(OSError):
    """Redis answered a command with an error (`-ERR ...`)."""


def encode(words: list[str] | list[str | bytes]) -> bytes:
    """One command in Redis's wire protocol (RESP): an array of bulk strings (text is sent
    as UTF-8, bytes as they are)."""
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word if isinstance(word, bytes) else word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class PlainRedis:
    """A connection opened on first use; `pipeline()` batches commands in one round trip."""

    def __init__(
        self, address: str | tuple[str, int], db: int, auth: list[str], *, select: bool = True
    ) -> None:
        self.address = address
        self.db = db
        self._auth = auth
        self._select = select and db != 0
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._pos = 0  # where the unread part of `_buf` starts

    @classmethod
    def of(cls, url: str, *, select: bool = True) -> PlainRedis | None:
        """A client for `url`, None when redis-py must serve it. `select=False` for a client
        that only publishes (channels are not per database; no `SELECT` round trip)."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        if set(query) - {"db"}:
            return None
        address: str | tuple[str, int]
        if parts.scheme == "unix":
            db = query.get("db", "0")
            address = unquote(parts.path)
        elif parts.scheme == "redis":
            db = query.get("db", parts.path.strip("/") or "0")
            try:
                address = (parts.hostname or "localhost", parts.port or 6379)
            except ValueError:  # a port that is not a number: redis-py says so
                return None
        else:
            return None
        if not db.isdigit():
            return None
        # As redis-py does it (the scheduler and the workers use it, and status must judge
        # the URL as they will): no AUTH without a user or a password; otherwise the
        # two-argument AUTH (Redis 6 and later), the user `default` when none is named (a
        # server without a password takes any password for it).
        user = unquote(parts.username) if parts.username else ""
        password = unquote(parts.password) if parts.password else ""
        auth = ["AUTH", user or "default", password] if user or password else []
        return cls(address, int(db), auth, select=select)

    def _connect(self, timeout: float) -> socket.socket:
        try:
            if isinstance(self.address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(self.address)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self.address, timeout=timeout)
        except OSError as exc:  # as redis-py words it: where, and why
            address = self.address
            where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
            raise OSError(f"Error connecting to {where}: {exc.strerror or exc}") from exc
        self._sock = sock
        setup = ([self._auth] if self._auth else []) + ([["SELECT", str(self.db)]] * self._select)
        if setup:
            sock.sendall(b"".join(encode(c) for c in setup))
            for _ in setup:
                reply = self._reply()
                if isinstance(reply, ReplyError):
                    raise reply
        return sock

    def execute(self, commands: list[list[Any]], *, timeout: float = TIMEOUT_S) -> list[Any]:
        """Send `commands` at once; their replies in order (an error reply as `ReplyError`)."""
        sock = self._sock or self._connect(timeout)
        sock.settimeout(timeout)
        sock.sendall(b"".join(encode(c) for c in commands))
        return [self._reply() for _ in commands]

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self)

    # A stream read as redis-py's methods of these names do (`retrain logs`, `metrics`).
    def xrange(
        self, name: str, min: str = "-", max: str = "+", count: int | None = None
    ) -> list[Any]:
        words = ["XRANGE", name, min, max]
        return self._one([*words, "COUNT", str(count)] if count is not None else words)

    def xrevrange(
        self, name: str, max: str = "+", min: str = "-", count: int | None = None
    ) -> list[Any]:
        words = ["XREVRANGE", name, max, min]
        return self._one([*words, "COUNT", str(count)] if count is not None else words)

    def _one(self, words: list[str]) -> list[Any]:
        reply = self.execute([words])[0]
        if isinstance(reply, ReplyError):
            raise reply
        return list(_shaped("stream", reply))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- RESP2 -----------------------------------------------------------------------------

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n", self._pos)) < 0:
            if len(self._buf) - self._pos > MAX_LINE_BYTES:
                raise OSError("a Redis reply line is too long")
            self._fill()
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        return line

    def _fill(self) -> None:
        # The buffer grows in place and what was read is dropped once per fill: a large value
        # (a worker advertisement anyone with Redis access may write) costs one pass, not one
        # copy of everything so far per 64 KiB received (60 MB took 18 s that way).
        assert self._sock is not None
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        chunk = self._sock.recv(1 << 20)
        if not chunk:
            raise OSError("Redis closed the connection")
        self._buf += chunk

    def _skip(self, count: int) -> None:
        """Read past `count` bytes without keeping them (at most one read's worth at once)."""
        while True:
            available = len(self._buf) - self._pos
            if available >= count:
                self._pos += count
                return
            count -= available
            self._pos = len(self._buf)
            self._fill()

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return ReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            if size > MAX_REPLY_BYTES:
                self._skip(size + 2)
                return TooLarge(size)
            while len(self._buf) - self._pos < size + 2:
                self._fill()
            data = bytes(self._buf[self._pos : self._pos + size])
            self._pos += size + 2
            return data
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise OSError(f"not a Redis reply: {line[:40]!r}")


class Pipeline:
    """The few commands `retrain status` pipelines, with redis-py's reply shapes."""

    def __init__(self, client: PlainRedis) -> None:
        self._client = client
        self._commands: list[list[str]] = []
        self._shapes: list[str] = []

    def _add(self, shape: str, *words: Any) -> Pipeline:
        self._commands.append([str(w) for w in words])
        self._shapes.append(shape)
        return self

    def get(self, key: str) -> Pipeline:
        return self._add("", "GET", key)

    def pttl(self, key: str) -> Pipeline:
        return self._add("", "PTTL", key)

    def llen(self, key: str) -> Pipeline:
        return self._add("", "LLEN", key)

    def smembers(self, key: str) -> Pipeline:
        return self._add("set", "SMEMBERS", key)

    def hgetall(self, key: str) -> Pipeline:
        return self._add("dict", "HGETALL", key)

    def hmget(self, key: str, fields: list[str]) -> Pipeline:
        return self._add("", "HMGET", key, *fields)

    def zcard(self, key: str) -> Pipeline:
        return self._add("", "ZCARD", key)

    def zrange(self, key: str, start: int, end: int, withscores: bool = False) -> Pipeline:
        if withscores:
            return self._add("scores", "ZRANGE", key, start, end, "WITHSCORES")
        return self._add("", "ZRANGE", key, start, end)

    def zcount(self, key: str, low: float | str, high: float | str) -> Pipeline:
        return self._add("", "ZCOUNT", key, low, high)

    def zrevrangebyscore(
        self, key: str, high: float | str, low: float | str, start: int, num: int,
        withscores: bool = False,
    ) -> Pipeline:
        words = ["ZREVRANGEBYSCORE", key, high, low]
        if withscores:
            return self._add("scores", *words, "WITHSCORES", "LIMIT", start, num)
        return self._add("", *words, "LIMIT", start, num)

    def xrevrange(self, key: str, count: int) -> Pipeline:
        return self._add("stream", "XREVRANGE", key, "+", "-", "COUNT", count)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands, shapes = self._commands, self._shapes
        self._commands, self._shapes = [], []
        if not commands:
            return []
        replies = self._client.execute(commands)
        out: list[Any] = []
        for shape, reply in zip(shapes, replies, strict=True):
            if isinstance(reply, ReplyError):
                if raise_on_error:
                    raise reply
                out.append(reply)
            else:
                out.append(_shaped(shape, reply))
        return out


def _shaped(shape: str, reply: Any) -> Any:
    if shape == "set":
        return set(reply or ())
    if shape == "dict":
        return _pairs(reply)
    if shape == "scores":
        items = list(reply or ())
        return [(items[i], float(items[i + 1])) for i in range(0, len(items) - 1, 2)]
    if shape == "stream":
        return [(entry[0], _pairs(entry[1])) for entry in reply or ()]
    return reply


def _pairs(reply: Any) -> dict[Any, Any]:
    items = list(reply or ())
    return {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}
