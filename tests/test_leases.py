"""The `LeaseLimiter` contract, run against `MemoryLeaseLimiter` and `RedisLeaseLimiter`."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

import pytest

from streaming_mw._redis import make_client
from streaming_mw.config import QueueRedisConfig, StreamLeaseConfig
from streaming_mw.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidUserIdError,
    LeaseLost,
    StreamLimitExceeded,
)
from streaming_mw.leases import Lease, MemoryLeaseLimiter, RedisLeaseLimiter
from streaming_mw.leases.redis import ACQUIRE
from tests.helpers.leases import MakeLimiter, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio

    from tests.helpers.redis_server import RedisServer

BAD_NUMBERS: list[object] = [0, -1, True, math.nan]
BAD_USER_IDS: list[object] = ["", "x" * 300, 42, None, b"bytes"]


@pytest.fixture
async def redis_limiter(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> AsyncIterator[RedisLeaseLimiter]:
    """A Redis limiter (limit 2, namespace ``t_leases``) on its own client; empty database."""
    client = make_client(QueueRedisConfig(redis_url))
    try:
        yield RedisLeaseLimiter(client, StreamLeaseConfig(limit=2, key_namespace="t_leases"))
    finally:
        await client.aclose()


async def test_acquire_up_to_limit_then_reject(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=3, ttl_seconds=30)
    leases = [await limiter.acquire("alice") for _ in range(3)]
    assert await limiter.active("alice") == 3

    with pytest.raises(StreamLimitExceeded) as info:
        await limiter.acquire("alice")
    assert (info.value.user_id, info.value.limit) == ("alice", 3)
    assert 1 <= info.value.retry_after <= 60
    assert info.value.retry_after in (29.0, 30.0)  # whole seconds until the oldest expires
    assert await limiter.active("alice") == 3
    assert len({lease.lease_id for lease in leases}) == 3

    for user_id, ttl, expected in [("bob", 0.3, 1.0), ("carol", 3600.0, 60.0)]:  # clamped
        await limiter.acquire(user_id, limit=1, ttl_seconds=ttl)
        with pytest.raises(StreamLimitExceeded) as info:
            await limiter.acquire(user_id, limit=1, ttl_seconds=ttl)
        assert info.value.retry_after == expected


async def test_per_call_limit_and_ttl_overrides(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=5, ttl_seconds=180)
    for _ in range(2):
        await limiter.acquire("alice", limit=2)
    with pytest.raises(StreamLimitExceeded) as info:
        await limiter.acquire("alice", limit=2)
    assert info.value.limit == 2
    await limiter.acquire("alice", limit=3)  # a larger override has room for one more
    assert await limiter.active("alice") == 3

    before = time.time()
    short = await limiter.acquire("bob", ttl_seconds=30)
    assert short.ttl_seconds == 30
    assert before + 30 - 2 <= short.expires_at <= time.time() + 30 + 2


@pytest.mark.parametrize("bad", BAD_NUMBERS)
async def test_bad_overrides_raise_configuration_error(
    make_limiter: MakeLimiter, bad: object
) -> None:
    limiter = make_limiter()
    with pytest.raises(ConfigurationError):
        await limiter.acquire("alice", limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await limiter.acquire("alice", ttl_seconds=bad)  # type: ignore[arg-type]
    assert await limiter.active("alice") == 0


@pytest.mark.parametrize("bad", BAD_USER_IDS, ids=["empty", "300-chars", "int", "None", "bytes"])
async def test_bad_user_id_is_rejected_on_acquire(make_limiter: MakeLimiter, bad: object) -> None:
    limiter = make_limiter()
    with pytest.raises(InvalidUserIdError):
        await limiter.acquire(bad)  # type: ignore[arg-type]


async def test_bad_user_id_is_rejected_on_active(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    for bad in BAD_USER_IDS:
        with pytest.raises(InvalidUserIdError):
            await limiter.active(bad)  # type: ignore[arg-type]


async def test_limits_are_per_user(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=2)
    for _ in range(2):
        await limiter.acquire("alice")
    with pytest.raises(StreamLimitExceeded):
        await limiter.acquire("alice")
    for _ in range(2):
        await limiter.acquire("bob")
    assert (await limiter.active("alice"), await limiter.active("bob")) == (2, 2)
    assert await limiter.active("carol") == 0
    await limiter.acquire("x" * 256)  # the longest allowed id
    assert await limiter.active("x" * 256) == 1


async def test_release_frees_a_slot(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=1)
    lease = await limiter.acquire("alice")
    await lease.release()
    assert lease.released
    assert await limiter.active("alice") == 0
    again = await limiter.acquire("alice")
    assert again.lease_id != lease.lease_id
    with pytest.raises(LeaseLost):  # a released lease cannot be refreshed back
        await limiter.refresh(lease)
    assert await limiter.active("alice") == 1


async def test_release_is_idempotent(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=2)
    first = await limiter.acquire("alice")
    await limiter.acquire("alice")
    other_user = await limiter.acquire("bob")
    await first.release()
    await first.release()
    await limiter.release(first)
    assert (await limiter.active("alice"), await limiter.active("bob")) == (1, 1)

    await limiter.acquire("alice")  # exactly one slot came back
    with pytest.raises(StreamLimitExceeded):
        await limiter.acquire("alice")
    assert await limiter.active("alice") == 2
    await other_user.release()
    assert await limiter.active("bob") == 0


async def test_lease_fields(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ttl_seconds=60)
    before = time.time()
    lease = await limiter.acquire("alice")
    assert isinstance(lease, Lease)
    assert (lease.user_id, lease.limiter, lease.ttl_seconds) == ("alice", limiter, 60)
    assert not lease.released
    assert len(lease.lease_id) >= 32
    assert int(lease.lease_id, 16) >= 0  # hex
    assert before + 60 - 2 <= lease.expires_at <= time.time() + 60 + 2

    ids = {(await limiter.acquire(f"user-{i}")).lease_id for i in range(20)}
    assert len(ids | {lease.lease_id}) == 21


async def test_refresh_moves_expiry_forward(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ttl_seconds=60)
    lease = await limiter.acquire("alice")
    first = lease.expires_at

    async def refreshed_forward() -> bool:
        await lease.refresh_async()
        return lease.expires_at > first

    await eventually(refreshed_forward)
    assert lease.expires_at <= time.time() + 60 + 2
    assert await limiter.active("alice") == 1


async def test_unrefreshed_lease_expires_and_frees_its_slot(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=1, ttl_seconds=0.3)
    lease = await limiter.acquire("alice")
    with pytest.raises(StreamLimitExceeded):
        await limiter.acquire("alice")

    async def expired() -> bool:
        return await limiter.active("alice") == 0

    await eventually(expired)
    assert time.time() >= lease.expires_at - 0.5
    await limiter.acquire("alice")
    assert await limiter.active("alice") == 1


async def test_refresh_of_expired_lease_is_lost_and_not_readded(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(limit=2, ttl_seconds=60)
    short = await limiter.acquire("alice", ttl_seconds=0.3)
    await limiter.acquire("alice")

    async def one_left() -> bool:
        return await limiter.active("alice") == 1

    await eventually(one_left)
    for _ in range(2):
        with pytest.raises(LeaseLost) as info:
            await short.refresh_async()
        assert (info.value.user_id, info.value.lease_id) == ("alice", short.lease_id)
    assert await limiter.active("alice") == 1

    await limiter.acquire("alice")  # the lost lease's slot is free and counted once
    with pytest.raises(StreamLimitExceeded):
        await limiter.acquire("alice")
    assert await limiter.active("alice") == 2
    await short.release()  # releasing a lost lease takes nothing from the live ones
    assert await limiter.active("alice") == 2


async def test_refreshed_lease_outlives_several_ttls(make_limiter: MakeLimiter) -> None:
    ttl = 0.4
    limiter = make_limiter(limit=1, ttl_seconds=ttl)
    lease = await limiter.acquire("alice")
    end = time.monotonic() + 4 * ttl
    while time.monotonic() < end:
        await asyncio.sleep(ttl / 4)
        await lease.refresh_async()
        assert await limiter.active("alice") == 1
        with pytest.raises(StreamLimitExceeded):
            await limiter.acquire("alice")
    assert lease.expires_at > time.time()


async def test_concurrent_acquires_respect_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=5)
    results = await asyncio.gather(
        *(limiter.acquire("alice") for _ in range(50)), return_exceptions=True
    )
    leases = [r for r in results if isinstance(r, Lease)]
    rejected = [r for r in results if isinstance(r, StreamLimitExceeded)]
    assert (len(leases), len(rejected)) == (5, 45)
    assert await limiter.active("alice") == 5


@pytest.mark.redis
async def test_a_retried_acquire_finds_its_own_lease(
    redis_limiter: RedisLeaseLimiter, redis_client: redis.asyncio.Redis
) -> None:
    # The first acquire ran but its answer was lost; the retry (same lease id) must not count
    # that lease against the limit and be refused, which would leak it until its TTL.
    script = redis_client.register_script(ACQUIRE)
    key = redis_limiter.key("alice")
    assert (await script(keys=[key], args=["lease-1", 1, 30_000]))[0] == 1
    assert (await script(keys=[key], args=["lease-1", 1, 30_000]))[0] == 1
    assert await redis_client.zcard(key) == 1
    assert (await script(keys=[key], args=["lease-2", 1, 30_000]))[0] == 0  # the limit holds


@pytest.mark.redis
async def test_braces_in_a_user_id_cannot_change_the_hash_tag(
    redis_limiter: RedisLeaseLimiter,
) -> None:
    hostile = ["{a}", "a}b", "a}:{b", "%7Ba%7D", "{", "}", "a%b"]
    keys = [redis_limiter.key(user) for user in hostile]
    assert len(set(keys)) == len(hostile)
    for key in keys:
        # exactly one tag, and it is the whole (encoded) user id
        assert key.count("{") == 1
        assert key.count("}") == 1
        assert key.endswith("}")
    assert redis_limiter.key("alice") == "t_leases:{alice}"  # plain ids are unchanged
    assert redis_limiter.key("a}b") == "t_leases:{a%7Db}"
    for user in hostile:
        lease = await redis_limiter.acquire(user)
        assert await redis_limiter.active(user) == 1
        await redis_limiter.release(lease)


@pytest.mark.redis
async def test_redis_key_layout_and_expiry(
    redis_limiter: RedisLeaseLimiter, redis_client: redis.asyncio.Redis
) -> None:
    key = "t_leases:{alice}"
    assert redis_limiter.key("alice") == key
    first = await redis_limiter.acquire("alice", ttl_seconds=30)
    second = await redis_limiter.acquire("alice", ttl_seconds=30)
    assert await redis_client.type(key) == b"zset"
    members = {first.lease_id.encode(), second.lease_id.encode()}
    assert set(await redis_client.zrange(key, 0, -1)) == members
    assert 0 < await redis_client.pttl(key) <= 30_000
    await first.release()
    assert await redis_client.exists(key) == 1
    await second.release()
    assert await redis_client.exists(key) == 0

    await redis_limiter.acquire("alice", ttl_seconds=0.3)

    async def key_gone() -> bool:
        return await redis_client.exists(key) == 0

    assert 0 < await redis_client.pttl(key) <= 300
    await eventually(key_gone)


@pytest.mark.redis
async def test_redis_limiters_on_two_clients_share_one_limit(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    config = StreamLeaseConfig(limit=3)
    one, two = make_client(QueueRedisConfig(redis_url)), make_client(QueueRedisConfig(redis_url))
    try:
        a, b = RedisLeaseLimiter(one, config), RedisLeaseLimiter(two, config)
        held = [await limiter.acquire("alice") for limiter in (a, b, a)][-1]
        with pytest.raises(StreamLimitExceeded):
            await b.acquire("alice")
        assert await b.active("alice") == 3
        await held.release()
        await b.acquire("alice")
        with pytest.raises(StreamLimitExceeded):
            await a.acquire("alice")
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.redis
async def test_redis_expiry_uses_redis_time(
    redis_limiter: RedisLeaseLimiter,
    redis_client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 10_000)  # a badly skewed client
    seconds, micros = await redis_client.time()
    before_ms = seconds * 1000 + micros // 1000
    lease = await redis_limiter.acquire("alice", ttl_seconds=20)
    seconds, micros = await redis_client.time()
    after_ms = seconds * 1000 + micros // 1000

    score = await redis_client.zscore(redis_limiter.key("alice"), lease.lease_id)
    assert score is not None
    assert before_ms + 20_000 <= score <= after_ms + 20_000
    assert lease.expires_at == pytest.approx(score / 1000, abs=0.001)

    await lease.refresh_async()
    refreshed = await redis_client.zscore(redis_limiter.key("alice"), lease.lease_id)
    assert refreshed is not None
    assert after_ms + 20_000 <= refreshed <= after_ms + 20_000 + 5_000
    assert lease.expires_at == pytest.approx(refreshed / 1000, abs=0.001)


@pytest.mark.redis
@pytest.mark.parametrize("user_id", ["a{b}c", "}{", "{x}", "ünïcødé 🚀", "with space", "a:b"])
async def test_redis_odd_user_ids(
    redis_limiter: RedisLeaseLimiter, redis_client: redis.asyncio.Redis, user_id: str
) -> None:
    # braces are percent-encoded, so the hash tag is always the whole user id
    tag = user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    key = f"t_leases:{{{tag}}}"
    assert redis_limiter.key(user_id) == key
    leases = [await redis_limiter.acquire(user_id) for _ in range(2)]
    with pytest.raises(StreamLimitExceeded):
        await redis_limiter.acquire(user_id)
    assert await redis_client.zcard(key) == 2
    assert await redis_limiter.active(user_id) == 2
    await redis_limiter.acquire("a")  # a different user with an overlapping name
    for lease in leases:
        await lease.refresh_async()
        await lease.release()
    assert await redis_client.exists(key) == 0
    assert await redis_limiter.active("a") == 1


@pytest.mark.redis
async def test_redis_down(
    redis_server: RedisServer, redis_limiter: RedisLeaseLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    """acquire/refresh/active raise `BackendUnavailableError` in bounded time; release logs."""
    lease = await redis_limiter.acquire("alice", ttl_seconds=30)
    redis_server.kill()
    with pytest.raises(BackendUnavailableError):
        await asyncio.wait_for(redis_limiter.acquire("alice"), 10)
    with pytest.raises(BackendUnavailableError):
        await asyncio.wait_for(redis_limiter.refresh(lease), 10)
    with pytest.raises(BackendUnavailableError):
        await asyncio.wait_for(redis_limiter.active("alice"), 10)

    with caplog.at_level(logging.WARNING, logger="streaming_mw.leases"):
        await asyncio.wait_for(lease.release(), 10)
        await asyncio.wait_for(lease.release(), 10)  # still idempotent: no second attempt
    assert lease.released
    warnings = [r.getMessage() for r in caplog.records if r.name == "streaming_mw.leases"]
    assert len(warnings) == 1
    assert lease.lease_id in warnings[0]


# --- the global limit (issue 16) -------------------------------------------------------------


async def test_global_limit_refuses_the_sixth_stream_of_three_users_on_two_processes(
    make_limiter: MakeLimiter,
) -> None:
    # Two limiters on one Redis are two processes; in memory each process has its own limits,
    # so both names are the same limiter there.
    first = make_limiter(limit=3, global_limit=5)
    second = (
        first if isinstance(first, MemoryLeaseLimiter) else make_limiter(limit=3, global_limit=5)
    )
    held = [
        await first.acquire("alice"),
        await second.acquire("alice"),
        await first.acquire("alice"),
        await second.acquire("bob"),
    ]
    with pytest.raises(StreamLimitExceeded) as per_user:
        await second.acquire("alice")
    assert (per_user.value.scope, per_user.value.limit) == ("user", 3)
    held.append(await first.acquire("bob"))
    for limiter in (first, second):
        with pytest.raises(StreamLimitExceeded) as info:
            await limiter.acquire("carol")
        assert (info.value.scope, info.value.limit) == ("global", 5)
        assert 1 <= info.value.retry_after <= 60
        assert "global limit of 5" in str(info.value)
    assert await first.active("carol") == 0
    await held[3].release()  # one of bob's: a global slot comes back
    carol = await second.acquire("carol")
    with pytest.raises(StreamLimitExceeded) as again:
        await first.acquire("dave")
    assert again.value.scope == "global"
    await carol.refresh_async()
    assert [await first.active(user) for user in ("alice", "bob", "carol")] == [3, 1, 1]


async def test_expired_leases_give_their_global_slot_back(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=3, global_limit=2)
    await limiter.acquire("alice", ttl_seconds=0.3)
    lost = await limiter.acquire("bob", ttl_seconds=0.3)
    with pytest.raises(StreamLimitExceeded):
        await limiter.acquire("carol")
    await asyncio.sleep(0.5)
    await limiter.acquire("carol")
    await limiter.acquire("dave")
    with pytest.raises(LeaseLost):
        await lost.refresh_async()
    with pytest.raises(StreamLimitExceeded) as info:
        await limiter.acquire("erin")
    assert info.value.scope == "global"


async def test_without_a_global_limit_users_are_independent(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(limit=1)
    for number in range(20):
        await limiter.acquire(f"user-{number}")
    with pytest.raises(StreamLimitExceeded) as info:
        await limiter.acquire("user-0")
    assert info.value.scope == "user"


@pytest.mark.redis
async def test_a_retried_acquire_under_a_global_limit_finds_its_own_lease(
    redis_client: redis.asyncio.Redis,
) -> None:
    limiter = RedisLeaseLimiter(
        redis_client, StreamLeaseConfig(limit=3, global_limit=1, key_namespace="t_global")
    )
    script = redis_client.register_script(ACQUIRE)
    keys = [limiter.key("alice"), limiter.key("alice").rsplit(":", 1)[0]]
    assert keys[1] == limiter.global_key == "t_global:{t_global:all}"
    assert limiter.key("a}b") == "t_global:{t_global:all}:a%7Db"
    args: list[str | int] = ["lease-1", 3, 30_000, 1]
    assert (await script(keys=keys, args=args))[0] == 1
    assert (await script(keys=keys, args=args))[0] == 1  # the retry: same lease, no refusal
    assert [await redis_client.zcard(key) for key in keys] == [1, 1]
    refused = await script(keys=keys, args=["lease-2", 3, 30_000, 1])
    assert (refused[0], refused[3]) == (0, 2)  # 2: the global limit
    await redis_client.delete(*keys)
