"""One leader among schedulers: a Redis key set with NX and an expiry, renewed every loop.

A standby takes over within the lease time after the leader stops renewing. Leadership only
avoids wasted work: correctness never depends on it, because the ledger's unique row stops a
second leader (during a network partition, say) from firing anything twice.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

from orchestrator.queue import keys

if TYPE_CHECKING:
    from redis import Redis

# Renew or release only a lease we still own (another scheduler may hold it by now).
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)


class Lease:
    def __init__(self, redis: Redis, ttl_s: float = 10.0) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = redis.register_script(_RENEW)  # registering sends nothing yet
        self._release = redis.register_script(_RELEASE)

    def hold(self) -> bool:
        """Renew the lease if we hold it, else try to take it; True when we lead."""
        if self._renew(keys=[keys.SCHEDULER_LEASE], args=[self.holder, self.ttl_ms]):
            return True
        return bool(self.redis.set(keys.SCHEDULER_LEASE, self.holder, nx=True, px=self.ttl_ms))

    def leader(self) -> str | None:
        value = self.redis.get(keys.SCHEDULER_LEASE)
        return value.decode() if isinstance(value, bytes) else value

    def release(self) -> None:
        self._release(keys=[keys.SCHEDULER_LEASE], args=[self.holder])
