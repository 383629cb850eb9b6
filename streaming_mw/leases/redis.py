"""Lease limiter shared by every process on one Redis (DESIGN §3, leases).

One sorted set per user, ``<namespace>:{<user_id>}``: member = lease id, score = expiry in ms
taken from Redis ``TIME`` (never a client clock). Acquire and refresh are Lua scripts, so
purge-count-add is atomic; release is ``ZREM``. The key expires with its last lease.

Release is best effort: when Redis cannot be reached the lease is logged and frees itself when
its TTL runs out (crash recovery covers it). Everything else raises `BackendUnavailableError`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .._redis import UNAVAILABLE, unavailable_as_backend_error
from ..config import StreamLeaseConfig
from ..errors import LeaseLost, StreamLimitExceeded
from .base import (
    Lease,
    check_user_id,
    hash_tag,
    new_lease_id,
    resolve_acquire,
    retry_after_from,
)

if TYPE_CHECKING:
    from .._redis import AsyncRedis

__all__ = ["RedisLeaseLimiter"]

log = logging.getLogger("streaming_mw.leases")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_EXPIRE_WITH_LAST = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
"""

# KEYS[1] = lease set; ARGV = lease id, limit, ttl ms -> {1, now, expiry} | {0, now, first expiry}
# The lease id is made by the caller, so a retried acquire (the first one ran, its answer was lost)
# finds its own lease and succeeds instead of counting it against the limit.
ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if (not redis.call('ZSCORE', KEYS[1], ARGV[1]))
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, now, tonumber(first[2])}
end
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
"""
    + _EXPIRE_WITH_LAST
    + "return {1, now, expiry}\n"
)

# KEYS[1] = lease set; ARGV = lease id, ttl ms -> {1, expiry} | {0, now} (lost: expired/gone)
REFRESH = (
    _NOW
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {0, now}
end
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[1])
"""
    + _EXPIRE_WITH_LAST
    + "return {1, expiry}\n"
)

# KEYS[1] = lease set -> number of unexpired leases
ACTIVE = _NOW + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')\n"


class RedisLeaseLimiter:
    """Leases in Redis: one limit per user across every process and host."""

    def __init__(
        self,
        client: AsyncRedis,
        config: StreamLeaseConfig | None = None,
        *,
        operation_timeout: float = 5.0,
    ) -> None:
        self.config = config or StreamLeaseConfig()
        self.operation_timeout = operation_timeout
        self._client = client
        self._acquire = client.register_script(ACQUIRE)
        self._refresh = client.register_script(REFRESH)
        self._active = client.register_script(ACTIVE)

    def key(self, user_id: str) -> str:
        """The sorted set holding ``user_id``'s leases."""
        return f"{self.config.key_namespace}:{{{hash_tag(user_id)}}}"

    async def acquire(
        self, user_id: str, *, limit: int | None = None, ttl_seconds: float | None = None
    ) -> Lease:
        limit, ttl = resolve_acquire(self.config, user_id, limit, ttl_seconds)
        lease_id = new_lease_id()
        ttl_ms = max(1, round(ttl * 1000))
        key = self.key(user_id)
        with unavailable_as_backend_error("lease acquire"):
            async with asyncio.timeout(self.operation_timeout):  # no extra task, unlike wait_for
                ok, now, expiry = await self._acquire(keys=[key], args=[lease_id, limit, ttl_ms])
        if not ok:
            raise StreamLimitExceeded(user_id, limit, retry_after_from((expiry - now) / 1000))
        return Lease(user_id, lease_id, expiry / 1000, ttl, self)

    async def refresh(self, lease: Lease) -> None:
        if lease.released:
            raise LeaseLost(lease.user_id, lease.lease_id)
        ttl_ms = max(1, round(lease.ttl_seconds * 1000))
        key = self.key(lease.user_id)
        with unavailable_as_backend_error("lease refresh"):
            async with asyncio.timeout(self.operation_timeout):
                ok, expiry = await self._refresh(keys=[key], args=[lease.lease_id, ttl_ms])
        if not ok:
            raise LeaseLost(lease.user_id, lease.lease_id)
        lease.expires_at = expiry / 1000

    async def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        try:
            async with asyncio.timeout(self.operation_timeout):
                await self._client.zrem(self.key(lease.user_id), lease.lease_id)
        except UNAVAILABLE as exc:
            log.warning(
                "could not release lease %s of user %r (Redis unavailable: %s); "
                "it frees itself when its TTL of %.0fs runs out",
                lease.lease_id,
                lease.user_id,
                exc,
                lease.ttl_seconds,
            )

    async def active(self, user_id: str) -> int:
        key = self.key(check_user_id(user_id))
        with unavailable_as_backend_error("lease count"):
            async with asyncio.timeout(self.operation_timeout):
                return int(await self._active(keys=[key]))

    async def aclose(self) -> None:
        """The client belongs to the container, which closes it."""
