"""`FailoverLeaseLimiter`: Redis first, per-process leases while the real redis-server is down."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import pytest

from streaming_mw._redis import make_client
from streaming_mw.config import QueueRedisConfig, StreamLeaseConfig
from streaming_mw.errors import BackendUnavailableError, StreamLimitExceeded
from streaming_mw.leases import (
    FailoverLeaseLimiter,
    MemoryLeaseLimiter,
    RedisFailurePolicy,
    RedisLeaseLimiter,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

    import redis.asyncio

    from streaming_mw.leases import Lease
    from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.redis

T = TypeVar("T")
RETRY = 5.0  # retry_interval, in seconds of the fake clock


async def bounded(awaitable: Awaitable[T]) -> T:
    """Await with a deadline, so a hang fails the test instead of blocking it."""
    return await asyncio.wait_for(awaitable, 10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    failover: FailoverLeaseLimiter
    primary: RedisLeaseLimiter
    fallback: MemoryLeaseLimiter
    clock: FakeClock
    redis: redis.asyncio.Redis  # the primary's client (reconnects after a restart)


def degraded(rig: Rig) -> bool:
    """``rig.failover.degraded``, read through a call so mypy does not narrow it."""
    return rig.failover.degraded


class MakeRig(Protocol):
    def __call__(self, *, policy: RedisFailurePolicy = "fallback", limit: int = 5) -> Rig: ...


@pytest.fixture
async def make_rig(redis_url: str, redis_client: redis.asyncio.Redis) -> AsyncIterator[MakeRig]:
    """Builds a failover limiter over a fresh client of the (empty) session redis-server."""
    clients: list[redis.asyncio.Redis] = []

    def make(*, policy: RedisFailurePolicy = "fallback", limit: int = 5) -> Rig:
        client = make_client(QueueRedisConfig(redis_url, connect_timeout=1, socket_timeout=2))
        clients.append(client)
        config = StreamLeaseConfig(limit=limit, ttl_seconds=60)
        primary, fallback, clock = (
            RedisLeaseLimiter(client, config),
            MemoryLeaseLimiter(config),
            FakeClock(),
        )
        failover = FailoverLeaseLimiter(
            primary, fallback, policy=policy, retry_interval=RETRY, clock=clock
        )
        return Rig(failover, primary, fallback, clock, client)

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()


@pytest.fixture
def lease_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="streaming_mw.leases")
    return caplog


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.name == "streaming_mw.leases"]
    return [m for m in messages if m.startswith("STREAMING FALLBACK")]


def recovery_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.name == "streaming_mw.leases"]
    return [m for m in messages if m.startswith("Redis answers again")]


async def test_normal_path_uses_redis(
    make_rig: MakeRig, redis_client: redis.asyncio.Redis, lease_log: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    lease = await bounded(rig.failover.acquire("alice"))
    assert lease.limiter is rig.primary
    assert await redis_client.exists(rig.primary.key("alice")) == 1
    assert await rig.fallback.active("alice") == 0
    assert await bounded(rig.failover.active("alice")) == 1
    assert not degraded(rig)

    await bounded(rig.failover.refresh(lease))
    await bounded(rig.failover.release(lease))
    assert await redis_client.exists(rig.primary.key("alice")) == 0
    assert lease_log.records == []


async def test_outage_falls_back_with_one_warning_then_recovers(
    make_rig: MakeRig,
    redis_server: RedisServer,
    lease_log: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(limit=3)
    redis_server.kill()

    during: list[Lease] = []
    for _ in range(3):
        during.append(await bounded(rig.failover.acquire("alice")))
        rig.clock.advance(RETRY)  # every acquisition tries Redis again, and fails again
    assert all(lease.limiter is rig.fallback for lease in during)
    assert degraded(rig)
    with pytest.raises(StreamLimitExceeded):  # the per-process limit still holds
        await bounded(rig.failover.acquire("alice"))
    assert await bounded(rig.failover.active("alice")) == 3
    await bounded(rig.failover.refresh(during[0]))
    [warning] = outage_warnings(lease_log)
    assert "per-process" in warning
    assert recovery_warnings(lease_log) == []

    redis_server.start()
    await bounded(rig.failover.release(during[2]))
    early = await bounded(rig.failover.acquire("alice"))  # retry_interval not elapsed yet
    assert early.limiter is rig.fallback
    assert await rig.redis.exists(rig.primary.key("alice")) == 0

    rig.clock.advance(RETRY)
    back = await bounded(rig.failover.acquire("alice"))
    assert back.limiter is rig.primary
    assert await rig.redis.zcard(rig.primary.key("alice")) == 1
    assert not degraded(rig)
    assert len(recovery_warnings(lease_log)) == 1
    assert len(outage_warnings(lease_log)) == 1

    # Leases keep their issuer: memory leases refresh and release in memory after recovery.
    await bounded(rig.failover.refresh(during[0]))
    await bounded(rig.failover.release(during[0]))
    assert await rig.fallback.active("alice") == 2
    assert await rig.redis.zcard(rig.primary.key("alice")) == 1
    assert await bounded(rig.failover.active("alice")) == 3
    for lease in (during[1], early, back):
        await bounded(rig.failover.release(lease))
    assert await bounded(rig.failover.active("alice")) == 0
    assert await rig.redis.exists(rig.primary.key("alice")) == 0


async def test_recovery_with_the_default_clock(
    redis_url: str,
    redis_server: RedisServer,
    lease_log: pytest.LogCaptureFixture,
) -> None:
    client = make_client(QueueRedisConfig(redis_url, connect_timeout=1, socket_timeout=2))
    try:
        primary, fallback = RedisLeaseLimiter(client), MemoryLeaseLimiter()
        failover = FailoverLeaseLimiter(primary, fallback, retry_interval=0.2)
        redis_server.kill()
        assert (await bounded(failover.acquire("alice"))).limiter is fallback
        redis_server.start()
        await asyncio.sleep(0.25)  # let retry_interval pass on the real monotonic clock
        assert (await bounded(failover.acquire("alice"))).limiter is primary
        assert await client.exists(primary.key("alice")) == 1
        assert (len(outage_warnings(lease_log)), len(recovery_warnings(lease_log))) == (1, 1)
    finally:
        await client.aclose()


async def test_reject_policy_raises_while_down(
    make_rig: MakeRig,
    redis_server: RedisServer,
    lease_log: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(policy="reject")
    redis_server.kill()
    with pytest.raises(BackendUnavailableError):
        await bounded(rig.failover.acquire("alice"))
    with pytest.raises(BackendUnavailableError):  # within retry_interval: Redis not even tried
        await bounded(rig.failover.acquire("alice"))
    rig.clock.advance(RETRY)
    with pytest.raises(BackendUnavailableError):
        await bounded(rig.failover.acquire("alice"))
    assert await rig.fallback.active("alice") == 0
    [warning] = outage_warnings(lease_log)
    assert "rejecting" in warning

    redis_server.start()
    rig.clock.advance(RETRY)
    lease = await bounded(rig.failover.acquire("alice"))
    assert lease.limiter is rig.primary
    assert await rig.redis.exists(rig.primary.key("alice")) == 1
    assert len(recovery_warnings(lease_log)) == 1


async def test_active_sums_both_while_up_and_falls_back_while_down(
    make_rig: MakeRig, redis_server: RedisServer, lease_log: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    redis_server.kill()
    in_memory = await bounded(rig.failover.acquire("alice"))
    assert in_memory.limiter is rig.fallback
    redis_server.start()
    rig.clock.advance(RETRY)
    in_redis = await bounded(rig.failover.acquire("alice"))
    assert in_redis.limiter is rig.primary
    assert await bounded(rig.failover.active("alice")) == 2
    assert await bounded(rig.failover.active("bob")) == 0

    redis_server.kill()  # a second outage, first noticed by active()
    assert await bounded(rig.failover.active("alice")) == 1
    assert degraded(rig)
    assert len(outage_warnings(lease_log)) == 2
    await bounded(rig.failover.release(in_redis))  # best effort while down: no exception
    await bounded(rig.failover.release(in_memory))
    assert await bounded(rig.failover.active("alice")) == 0


async def test_limit_rejection_from_redis_ends_the_outage(
    make_rig: MakeRig, redis_server: RedisServer, lease_log: pytest.LogCaptureFixture
) -> None:
    """Redis answering "limit reached" proves it is back: a retry must not go to memory."""
    rig = make_rig(limit=2)
    redis_server.kill()
    assert (await bounded(rig.failover.acquire("bob"))).limiter is rig.fallback
    redis_server.start()
    for _ in range(2):  # alice is at her global limit, through another process
        await bounded(rig.primary.acquire("alice"))

    rig.clock.advance(RETRY)
    with pytest.raises(StreamLimitExceeded):
        await bounded(rig.failover.acquire("alice"))
    with pytest.raises(StreamLimitExceeded):  # an immediate retry is refused as well
        await bounded(rig.failover.acquire("alice"))
    assert not degraded(rig)
    assert await rig.fallback.active("alice") == 0
    assert len(recovery_warnings(lease_log)) == 1


async def test_aclose_closes_both(make_rig: MakeRig) -> None:
    rig = make_rig()
    lease = await bounded(rig.failover.acquire("alice"))
    await rig.failover.aclose()  # the client belongs to the caller; leases are untouched
    assert await bounded(rig.primary.active("alice")) == 1
    await bounded(lease.release())
