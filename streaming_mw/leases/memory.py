"""Per-process lease limiter: correct within one process, knows nothing of others.

`released` is an `asyncio.Condition`-like wake-up for waiters: every release (and every lease
found expired) wakes whoever waits for a slot, with no polling.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..config import StreamLeaseConfig
from ..errors import LeaseLost, StreamLimitExceeded
from .base import Lease, check_user_id, new_lease_id, resolve_acquire, retry_after_from

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MemoryLeaseLimiter"]


class MemoryLeaseLimiter:
    """Leases kept in a dict, expiring by the clock; for development, tests and fallback.

    Every method runs without awaiting, so on one event loop each call is atomic.
    """

    def __init__(
        self, config: StreamLeaseConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or StreamLeaseConfig()
        self._clock = clock
        self._leases: dict[str, dict[str, float]] = {}
        self._count = 0
        self._freed: asyncio.Event | None = None

    def next_release(self) -> asyncio.Event:
        """An event set by the next release in this limiter (take it before trying to acquire,
        so a release in between is not missed)."""
        if self._freed is None:
            self._freed = asyncio.Event()
        return self._freed

    def _wake(self) -> None:
        freed, self._freed = self._freed, None
        if freed is not None:
            freed.set()

    def _live(self, user_id: str, now: float) -> dict[str, float]:
        held = self._leases.get(user_id, {})
        expired = [lease_id for lease_id, expiry in held.items() if expiry <= now]
        for lease_id in expired:
            del held[lease_id]
            self._count -= 1
        if not held:
            self._leases.pop(user_id, None)
        return held

    async def acquire(
        self, user_id: str, *, limit: int | None = None, ttl_seconds: float | None = None
    ) -> Lease:
        limit, ttl = resolve_acquire(self.config, user_id, limit, ttl_seconds)
        now = self._clock()
        held = self._live(user_id, now)
        if len(held) >= limit:
            raise StreamLimitExceeded(user_id, limit, retry_after_from(min(held.values()) - now))
        cap = self.config.global_limit
        if cap is not None and self._count >= cap and self._purge(now) >= cap:
            first = min(min(leases.values()) for leases in self._leases.values())
            raise StreamLimitExceeded(user_id, cap, retry_after_from(first - now), "global")
        lease = Lease(user_id, new_lease_id(), now + ttl, ttl, self)
        self._leases.setdefault(user_id, {})[lease.lease_id] = lease.expires_at
        self._count += 1
        return lease

    def _purge(self, now: float) -> int:
        """Drop every expired lease; how many are left."""
        for user_id in list(self._leases):
            self._live(user_id, now)
        return self._count

    async def refresh(self, lease: Lease) -> None:
        now = self._clock()
        held = self._live(lease.user_id, now)
        if lease.released or lease.lease_id not in held:
            raise LeaseLost(lease.user_id, lease.lease_id)
        lease.expires_at = held[lease.lease_id] = now + lease.ttl_seconds

    async def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        held = self._leases.get(lease.user_id)
        if held is not None and held.pop(lease.lease_id, None) is not None:
            self._count -= 1
            if not held:
                del self._leases[lease.user_id]
        self._wake()

    async def active(self, user_id: str) -> int:
        return len(self._live(check_user_id(user_id), self._clock()))

    async def aclose(self) -> None:
        """Nothing to free."""
