"""Failover on a Redis Cluster of 3 masters with one replica each: the master owning a live
stream's slot is SIGKILLed while 20 followers read the stream and a producer publishes."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from redis.crc import key_slot

from streaming_mw._redis import make_cluster_client
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.channels.stream import AsyncStreamChannel
from streaming_mw.config import ChannelConfig, QueueRedisConfig, StreamLeaseConfig
from streaming_mw.errors import BackendUnavailableError, StreamNotFoundError
from streaming_mw.events import StreamEvent
from streaming_mw.leases import FailoverLeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter
from tests.helpers.redis_cluster import RedisCluster, outcome, own_cluster, read_all

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


pytestmark = [pytest.mark.redis, pytest.mark.slow]

EVENTS = 60
KILL_AFTER = 20
FOLLOWERS = 20
DEADLINE = 40.0


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 masters with one replica each, for this test alone (it kills a master)."""
    with own_cluster(tmp_path, replicas=1) as cluster:
        yield cluster


async def publish(channel: AsyncStreamChannel, stream_id: str, event: StreamEvent) -> int:
    """Publish like an emitter: ride over an outage (retry), re-create a lost stream. Returns
    how many attempts failed."""
    deadline = time.monotonic() + 20
    failed = 0
    while True:
        try:
            await channel.publish(stream_id, event)
            return failed
        except BackendUnavailableError:
            failed += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        except StreamNotFoundError:
            await channel.create(stream_id)


def user_on(cluster: RedisCluster, limiter: RedisLeaseLimiter, port: int) -> str:
    """A user id whose lease key lives on the master at ``port``."""
    ranges = [(low, high) for low, high, node in cluster.slot_ranges() if node.port == port]
    for n in range(10_000):
        slot = key_slot(limiter.key(f"u{n}").encode())
        if any(low <= slot <= high for low, high in ranges):
            return f"u{n}"
    raise LookupError(port)


async def test_followers_and_leases_survive_the_loss_of_their_master(
    replicated_cluster: RedisCluster,
) -> None:
    started = time.monotonic()
    client = make_cluster_client(QueueRedisConfig(replicated_cluster.url))
    config = ChannelConfig(subscribe_timeout=0.5)
    backend = RedisChannelBackend(client, config)
    await backend.start()
    channel = AsyncStreamChannel(backend, config)
    lease_config = StreamLeaseConfig(limit=3, ttl_seconds=60)
    redis_leases = RedisLeaseLimiter(client, lease_config)
    leases = FailoverLeaseLimiter(redis_leases, MemoryLeaseLimiter(lease_config))
    try:
        await channel.create("live")
        followers = [await channel.follow("live") for _ in range(FOLLOWERS)]
        readers = [asyncio.create_task(read_all(f)) for f in followers]
        victim = replicated_cluster.master_for(backend.keys("live").meta)
        user = user_on(replicated_cluster, redis_leases, victim.port)
        held = [await leases.acquire(user), await leases.acquire(user)]
        await asyncio.to_thread(replicated_cluster.wait_replicas)
        failed = 0
        for i in range(1, EVENTS + 1):
            if i == KILL_AFTER:
                victim.kill()
                # a lease asked for while its master is gone: answered, from memory, no hang
                during = await asyncio.wait_for(leases.acquire(user), 10)
                fell_back = leases.degraded
            failed += await publish(channel, "live", StreamEvent("progress", {"i": i}))
            await asyncio.sleep(0.02)
        assert failed > 0  # the producer did see the outage
        heir = replicated_cluster.master_for(backend.keys("live").meta)
        assert heir is not victim
        # the leases taken before the kill were replicated: the promoted replica holds them
        assert await redis_leases.active(user) == 2
        for lease in held:
            await lease.refresh_async()
        await during.release()
        for lease in held:
            await lease.release()
        assert await redis_leases.active(user) == 0
        await publish(channel, "live", StreamEvent("complete", {"success": True}))
        done, pending = await asyncio.wait(readers, timeout=DEADLINE)
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} follower(s) hung"
        outcomes = [outcome(task.result(), EVENTS) for task in done]
        # the live channel moved to the promoted replica: one shard subscriber connection there
        subscribers = [
            line for line in heir.cli("CLIENT", "LIST").splitlines() if " ssub=1 " in line
        ]
        assert len(subscribers) == 1
        print(f"failover: {outcomes.count('continued')} continued, "
              f"{outcomes.count('reset')} reset, {failed} failed publish attempt(s), "
              f"lease during the outage from {'memory' if fell_back else 'Redis'}, "
              f"{time.monotonic() - started:.1f}s")  # fmt: skip
    finally:
        await backend.aclose()
        await client.aclose()
