"""Per-process lease limiter: correct within one process, knows nothing of others."""

from __future__ import annotations

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

    def _live(self, user_id: str, now: float) -> dict[str, float]:
        held = self._leases.get(user_id, {})
        expired = [lease_id for lease_id, expiry in held.items() if expiry <= now]
        for lease_id in expired:
            del held[lease_id]
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
        lease = Lease(user_id, new_lease_id(), now + ttl, ttl, self)
        self._leases.setdefault(user_id, {})[lease.lease_id] = lease.expires_at
        return lease

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
        if held is not None:
            held.pop(lease.lease_id, None)
            if not held:
                del self._leases[lease.user_id]

    async def active(self, user_id: str) -> int:
        return len(self._live(check_user_id(user_id), self._clock()))

    async def aclose(self) -> None:
        """Nothing to free."""
