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
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio.cluster import RedisCluster

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
    from collections.abc import Sequence

    from .._redis import AsyncRedis

__all__ = ["RedisLeaseLimiter"]

log = logging.getLogger("streaming_mw.leases")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_EXPIRE_WITH_LAST = """
local function expire_with_last(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, last[2]) end
end
"""

# KEYS[1] = user set [, KEYS[2] = global set]; ARGV = lease id, limit, ttl ms, global limit
# -> {1, now, expiry} | {0, now, first expiry, 1 (user) | 2 (global)}
# The lease id is made by the caller, so a retried acquire (the first one ran, its answer was lost)
# finds its own lease and succeeds instead of counting it against either limit.
ACQUIRE = (
    _NOW
    + _EXPIRE_WITH_LAST
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, now, tonumber(first[2]), 1}
  end
  if KEYS[2] then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
      local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
      return {0, now, tonumber(first[2]), 2}
    end
  end
end
local expiry = now + tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, expiry, ARGV[1])
  expire_with_last(key)
end
return {1, now, expiry}
"""
)

# KEYS = user set [, global set]; ARGV = lease id, ttl ms -> {1, expiry} | {0, now} (lost)
REFRESH = (
    _NOW
    + _EXPIRE_WITH_LAST
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) <= now then
  for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
  return {0, now}
end
local expiry = now + tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', expiry, ARGV[1])
  expire_with_last(key)
end
return {1, expiry}
"""
)

# KEYS = user set [, global set]; ARGV = lease id, then one channel per key -> removed (0 | 1)
# A removal is announced on each key's channel, which wakes the processes waiting for a slot.
RELEASE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
for i, key in ipairs(KEYS) do
  if i > 1 then redis.call('ZREM', key, ARGV[1]) end
  if removed == 1 then redis.call('PUBLISH', ARGV[i + 1], '0 0 ') end
end
return removed
"""
RELEASE_SHARDED = RELEASE.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
"""`RELEASE` for a Redis Cluster: the channel shares the key's hash tag, so ``SPUBLISH``."""

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
        self._release = client.register_script(
            RELEASE_SHARDED if isinstance(client, RedisCluster) else RELEASE
        )
        self._active = client.register_script(ACTIVE)

    @property
    def global_key(self) -> str | None:
        """The sorted set of every user's leases, when ``global_limit`` is set. Its hash tag
        ``{<key_namespace>:all}`` is shared by every user's set, so each script stays in one
        slot (on a cluster: all lease keys live on that slot's master)."""
        if self.config.global_limit is None:
            return None
        return f"{self.config.key_namespace}:{{{self.config.key_namespace}:all}}"

    def key(self, user_id: str) -> str:
        """The sorted set holding ``user_id``'s leases."""
        global_key = self.global_key
        if global_key is not None:
            return f"{global_key}:{hash_tag(user_id)}"
        return f"{self.config.key_namespace}:{{{hash_tag(user_id)}}}"

    def _keys(self, user_id: str) -> list[str]:
        global_key = self.global_key
        return [self.key(user_id)] + ([] if global_key is None else [global_key])

    def release_channel(self, user_id: str, scope: Literal["user", "global"]) -> str:
        """The channel a release of one of ``user_id``'s leases (``scope="user"``) or of any
        lease (``"global"``) is announced on; it shares its key's hash tag."""
        global_key = self.global_key
        if scope == "global" and global_key is not None:
            return f"{global_key}:freed"
        return f"{self.key(user_id)}:freed"

    async def acquire(
        self, user_id: str, *, limit: int | None = None, ttl_seconds: float | None = None
    ) -> Lease:
        limit, ttl = resolve_acquire(self.config, user_id, limit, ttl_seconds)
        lease_id = new_lease_id()
        ttl_ms = max(1, round(ttl * 1000))
        cap = self.config.global_limit or 0
        with unavailable_as_backend_error("lease acquire"):
            async with asyncio.timeout(self.operation_timeout):  # no extra task, unlike wait_for
                answer = await self._acquire(
                    keys=self._keys(user_id), args=[lease_id, limit, ttl_ms, cap]
                )
        ok, now, expiry = answer[:3]
        if not ok:
            retry_after = retry_after_from((expiry - now) / 1000)
            if answer[3] == 2:
                raise StreamLimitExceeded(user_id, cap, retry_after, "global")
            raise StreamLimitExceeded(user_id, limit, retry_after)
        return Lease(user_id, lease_id, expiry / 1000, ttl, self)

    async def refresh(self, lease: Lease) -> None:
        if lease.released:
            raise LeaseLost(lease.user_id, lease.lease_id)
        ttl_ms = max(1, round(lease.ttl_seconds * 1000))
        keys = self._keys(lease.user_id)
        with unavailable_as_backend_error("lease refresh"):
            async with asyncio.timeout(self.operation_timeout):
                ok, expiry = await self._refresh(keys=keys, args=[lease.lease_id, ttl_ms])
        if not ok:
            raise LeaseLost(lease.user_id, lease.lease_id)
        lease.expires_at = expiry / 1000

    async def refresh_many(self, leases: Sequence[Lease]) -> list[LeaseLost | None]:
        """Refresh ``leases`` in one round trip (a pipeline; on a cluster, one per master).

        Returns, per lease, `LeaseLost` or None (refreshed); raises `BackendUnavailableError`
        when Redis cannot be reached (then none of them was refreshed, or some were: a retry
        is harmless)."""
        results: list[LeaseLost | None] = [
            LeaseLost(lease.user_id, lease.lease_id) if lease.released else None for lease in leases
        ]
        pending = [(index, lease) for index, lease in enumerate(leases) if not lease.released]
        if not pending:
            return results
        with unavailable_as_backend_error("lease refresh"):
            async with asyncio.timeout(self.operation_timeout):
                pipe: Any = self._client.pipeline(transaction=False)
                sharded = isinstance(self._client, RedisCluster)
                for _, lease in pending:
                    keys = self._keys(lease.user_id)
                    args: list[str | int] = [
                        lease.lease_id,
                        max(1, round(lease.ttl_seconds * 1000)),
                    ]
                    if sharded:  # EVAL: each master may not have loaded the script yet
                        pipe.eval(REFRESH, len(keys), *keys, *args)
                    else:
                        await self._refresh(keys=keys, args=args, client=pipe)
                answers = await pipe.execute(raise_on_error=True)
        for (index, lease), (ok, expiry) in zip(pending, answers, strict=True):
            if ok:
                lease.expires_at = expiry / 1000
            else:
                results[index] = LeaseLost(lease.user_id, lease.lease_id)
        return results

    async def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        keys = self._keys(lease.user_id)
        channels = [self.release_channel(lease.user_id, "user")]
        if len(keys) > 1:
            channels.append(self.release_channel(lease.user_id, "global"))
        try:
            async with asyncio.timeout(self.operation_timeout):
                await self._release(keys=keys, args=[lease.lease_id, *channels])
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
