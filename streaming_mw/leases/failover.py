"""Redis first, the per-process limiter while Redis is unreachable (seed: "Failure Modes").

Policy ``fallback`` (default): an acquisition that cannot reach Redis is served by the memory
limiter, with one warning per outage, and Redis is tried again at most every
``retry_interval`` seconds; the first success logs the recovery. Policy ``reject``: such an
acquisition raises `BackendUnavailableError` instead.

Each `Lease` remembers the limiter that issued it, so refresh and release always go to the
right place, whichever state the failover is in when they happen.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal, TypeAlias

from ..errors import BackendUnavailableError, StreamLimitExceeded

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import Lease, LeaseLimiter

__all__ = ["FailoverLeaseLimiter", "RedisFailurePolicy"]

log = logging.getLogger("streaming_mw.leases")

RedisFailurePolicy: TypeAlias = Literal["fallback", "reject"]


class FailoverLeaseLimiter:
    """Routes acquisitions to ``primary`` and falls back to ``fallback`` while it is down."""

    def __init__(
        self,
        primary: LeaseLimiter,
        fallback: LeaseLimiter,
        *,
        policy: RedisFailurePolicy = "fallback",
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.policy = policy
        self.retry_interval = retry_interval
        self._clock = clock
        self._down_since: float | None = None
        self._last_attempt = 0.0

    @property
    def degraded(self) -> bool:
        """True while the primary is considered down."""
        return self._down_since is not None

    async def acquire(
        self, user_id: str, *, limit: int | None = None, ttl_seconds: float | None = None
    ) -> Lease:
        now = self._clock()
        if self._down_since is None or now - self._last_attempt >= self.retry_interval:
            self._last_attempt = now
            try:
                lease = await self.primary.acquire(user_id, limit=limit, ttl_seconds=ttl_seconds)
            except BackendUnavailableError as exc:
                self._mark_down(exc)
            except StreamLimitExceeded:
                self._mark_up()  # Redis answered: the outage is over
                raise
            else:
                self._mark_up()
                return lease
        if self.policy == "reject":
            raise BackendUnavailableError("Redis is unavailable and the lease policy is 'reject'")
        return await self.fallback.acquire(user_id, limit=limit, ttl_seconds=ttl_seconds)

    async def refresh(self, lease: Lease) -> None:
        await lease.limiter.refresh(lease)

    async def release(self, lease: Lease) -> None:
        await lease.limiter.release(lease)

    async def active(self, user_id: str) -> int:
        """Leases held in Redis plus those held here while Redis was down."""
        held_here = await self.fallback.active(user_id)
        try:
            return held_here + await self.primary.active(user_id)
        except BackendUnavailableError as exc:
            self._mark_down(exc)
            return held_here

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.fallback.aclose()

    def _mark_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = self._clock()
            action = (
                "using per-process leases until it answers again (limits are per process meanwhile)"
                if self.policy == "fallback"
                else "rejecting new streams until it answers again"
            )
            log.warning("STREAMING FALLBACK: Redis unavailable for leases (%s); %s", exc, action)

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "Redis answers again after %.1fs; leases are global again",
                self._clock() - self._down_since,
            )
            self._down_since = None
