"""`LeaseKeeper`: keeps held leases alive on memory and Redis limiters."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import pytest

from streaming_mw._redis import make_client
from streaming_mw.config import QueueRedisConfig, StreamLeaseConfig
from streaming_mw.errors import LeaseLost, StreamLimitExceeded
from streaming_mw.leases import LeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter
from streaming_mw.runtime.keeper import LeaseKeeper
from tests.helpers.leases import MakeLimiter, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    import redis.asyncio

    from streaming_mw.leases import Lease
    from tests.helpers.redis_server import RedisServer

TASK_NAME = "streaming_mw.lease_keeper"


def keeper_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == TASK_NAME and not t.done()]


def lease_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "streaming_mw.leases" and r.levelno == logging.WARNING
    ]
    return [m for m in messages if text in m]


async def stays_alive(limiter: LeaseLimiter, user_id: str, seconds: float, count: int) -> None:
    """Check for ``seconds`` that ``user_id`` keeps holding exactly ``count`` leases."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert await limiter.active(user_id) == count
        await asyncio.sleep(0.05)


@pytest.fixture
async def keeper() -> AsyncIterator[LeaseKeeper]:
    keeper = LeaseKeeper()
    try:
        yield keeper
    finally:
        await keeper.stop()


@pytest.fixture
def lease_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="streaming_mw.leases")
    return caplog


async def test_keeps_a_short_lease_alive(make_limiter: MakeLimiter, keeper: LeaseKeeper) -> None:
    ttl = 0.4
    limiter = make_limiter(limit=1, ttl_seconds=ttl)
    lease = await limiter.acquire("alice")
    keeper.hold(lease)
    keeper.start()

    seen = [lease.expires_at]
    end = time.monotonic() + 3.5 * ttl
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
        assert await limiter.active("alice") == 1
        if lease.expires_at != seen[-1]:
            seen.append(lease.expires_at)
    assert seen == sorted(seen)
    assert len(seen) >= 4  # refreshed at least three times
    assert lease.expires_at > time.time()
    with pytest.raises(StreamLimitExceeded):
        await limiter.acquire("alice")
    assert keeper.held == [lease]
    assert not lease.released


async def test_drop_stops_refreshing(make_limiter: MakeLimiter, keeper: LeaseKeeper) -> None:
    limiter = make_limiter(limit=1, ttl_seconds=0.4)
    lease = await limiter.acquire("alice")
    first = lease.expires_at
    keeper.hold(lease)
    keeper.start()

    async def refreshed() -> bool:
        return lease.expires_at > first

    async def expired() -> bool:
        return await limiter.active("alice") == 0

    await eventually(refreshed)
    keeper.drop(lease)
    assert keeper.held == []
    await eventually(expired)
    with pytest.raises(LeaseLost):
        await lease.refresh_async()
    assert len(keeper_tasks()) == 1  # still running, with nothing to do


async def test_lost_lease_is_dropped_and_the_others_kept(
    make_limiter: MakeLimiter, keeper: LeaseKeeper, lease_log: pytest.LogCaptureFixture
) -> None:
    limiter = make_limiter(limit=2)
    tiny = await limiter.acquire("alice", ttl_seconds=0.05)
    kept = await limiter.acquire("alice", ttl_seconds=0.4)
    keeper.hold(tiny)
    keeper.hold(kept)

    async def tiny_expired() -> bool:
        return await limiter.active("alice") == 1

    async def tiny_dropped() -> bool:
        return tiny not in keeper.held

    await eventually(tiny_expired)
    keeper.start()  # too late for tiny
    await eventually(tiny_dropped)
    [warning] = lease_warnings(lease_log, tiny.lease_id)
    assert "expired" in warning
    await stays_alive(limiter, "alice", 3 * kept.ttl_seconds, 1)
    assert keeper.held == [kept]
    assert len(keeper_tasks()) == 1


@pytest.mark.redis
async def test_lease_removed_from_redis_is_dropped(
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    keeper: LeaseKeeper,
    lease_log: pytest.LogCaptureFixture,
) -> None:
    client = make_client(QueueRedisConfig(redis_url))
    try:
        limiter = RedisLeaseLimiter(client, StreamLeaseConfig(limit=2, ttl_seconds=0.6))
        gone, kept = await limiter.acquire("alice"), await limiter.acquire("alice")
        keeper.hold(gone)
        keeper.hold(kept)
        keeper.start()
        assert await redis_client.zrem(limiter.key("alice"), gone.lease_id) == 1

        async def dropped() -> bool:
            return gone not in keeper.held

        await eventually(dropped)
        assert len(lease_warnings(lease_log, gone.lease_id)) == 1
        await stays_alive(limiter, "alice", 3 * 0.6, 1)
        assert keeper.held == [kept]
        assert await redis_client.zscore(limiter.key("alice"), gone.lease_id) is None
    finally:
        await keeper.stop()
        await client.aclose()


@pytest.mark.redis
async def test_refresh_survives_a_short_redis_outage(
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    keeper: LeaseKeeper,
    lease_log: pytest.LogCaptureFixture,
) -> None:
    """Redis is killed and comes back with its data (from a snapshot) before the lease expires."""
    ttl = 3.0
    client = make_client(QueueRedisConfig(redis_server.url, connect_timeout=1, socket_timeout=1))
    snapshot = redis_server.directory / "dump.rdb"
    try:
        limiter = RedisLeaseLimiter(client, StreamLeaseConfig(limit=1, ttl_seconds=ttl))
        lease = await limiter.acquire("alice")
        first = lease.expires_at
        keeper.hold(lease)
        keeper.start()

        async def refreshed() -> bool:
            return lease.expires_at > first

        async def refresh_failed() -> bool:
            return bool(lease_warnings(lease_log, "could not refresh lease"))

        await eventually(refreshed)
        await redis_client.save()
        redis_server.kill()
        before_outage = lease.expires_at
        await eventually(refresh_failed)
        redis_server.start()
        snapshot.unlink()
        restarted = time.time()

        async def refreshed_after_restart() -> bool:
            return lease.expires_at > restarted + ttl - 0.5

        await eventually(refreshed_after_restart, timeout=ttl)
        assert keeper.held == [lease]
        await asyncio.sleep(max(0.0, before_outage - time.time()) + 0.2)
        assert await limiter.active("alice") == 1  # alive past the expiry it had at the kill
        with pytest.raises(StreamLimitExceeded):
            await limiter.acquire("alice")
        assert lease_warnings(lease_log, "expired") == []
    finally:
        await keeper.stop()
        snapshot.unlink(missing_ok=True)  # later starts must come up empty
        await client.aclose()


async def test_stop_is_clean_and_idempotent() -> None:
    limiter = MemoryLeaseLimiter(StreamLeaseConfig(limit=1, ttl_seconds=0.4))
    keeper = LeaseKeeper()
    await keeper.stop()  # never started: nothing to do
    lease = await limiter.acquire("alice")
    keeper.hold(lease)
    keeper.start()
    keeper.start()  # already running: no second task
    assert len(keeper_tasks()) == 1

    await keeper.stop()
    await keeper.stop()
    assert keeper_tasks() == []
    assert not lease.released  # stopping does not release
    assert keeper.held == [lease]

    async def expired() -> bool:
        return await limiter.active("alice") == 0

    await eventually(expired)  # nobody refreshes it any more

    again = await limiter.acquire("alice")
    keeper.drop(lease)
    keeper.hold(again)
    keeper.start()  # a stopped keeper can start again
    try:
        await stays_alive(limiter, "alice", 3 * 0.4, 1)
    finally:
        await keeper.stop()
    assert keeper_tasks() == []


async def test_held_lists_held_leases(keeper: LeaseKeeper) -> None:
    limiter = MemoryLeaseLimiter()
    a, b = await limiter.acquire("alice"), await limiter.acquire("bob")
    assert keeper.held == []
    keeper.hold(a)
    keeper.hold(b)
    keeper.hold(a)  # holding twice keeps one entry
    assert sorted(lease.lease_id for lease in keeper.held) == sorted([a.lease_id, b.lease_id])
    keeper.drop(a)
    assert keeper.held == [b]
    keeper.drop(a)  # dropping twice is harmless
    keeper.drop(b)
    assert keeper.held == []


async def test_refresh_is_one_batched_call_per_interval(
    make_limiter: MakeLimiter, keeper: LeaseKeeper
) -> None:
    ttl = 0.9  # refreshed every 0.3 s
    limiter = make_limiter(limit=10, ttl_seconds=ttl)
    if not isinstance(limiter, RedisLeaseLimiter):
        pytest.skip("memory leases are refreshed in process, without a round trip")
    batches: list[int] = []
    singles: list[Lease] = []
    refresh_many, refresh = limiter.refresh_many, limiter.refresh

    async def counting_many(leases: Sequence[Lease]) -> list[LeaseLost | None]:
        batches.append(len(leases))
        return await refresh_many(leases)

    async def counting_one(lease: Lease) -> None:
        singles.append(lease)
        await refresh(lease)

    limiter.refresh_many = counting_many  # type: ignore[method-assign]
    limiter.refresh = counting_one  # type: ignore[method-assign]
    keeper.start()
    for _ in range(10):  # held 30 ms apart: due at ten different times at first
        keeper.hold(await limiter.acquire("alice"))
        await asyncio.sleep(0.03)
    await stays_alive(limiter, "alice", 2.0, 10)
    assert singles == []
    assert batches[-3:] == [10, 10, 10]  # in step: every lease in each batch
    assert len(batches) <= 2.3 / (ttl / 3) + 3  # one batch per interval, after settling
