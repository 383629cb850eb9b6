"""Live fan-out on a Redis Cluster: SPUBLISH, one sharded subscriber connection per master,
RESYNC per shard after a reconnect."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio
from redis.crc import key_slot

from streaming_mw._redis import make_cluster_client
from streaming_mw.channels.base import RESYNC, Notice
from streaming_mw.channels.redis import APPEND, APPEND_SHARDED, RedisChannelBackend
from streaming_mw.channels.stream import AsyncStreamChannel
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.events import StreamEvent
from tests.helpers.leases import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streaming_mw.channels.base import QueueSubscription
    from tests.helpers.redis_cluster import ClusterNode, RedisCluster

pytestmark = pytest.mark.redis


@pytest.fixture
async def backend(redis_cluster: RedisCluster) -> AsyncIterator[RedisChannelBackend]:
    """A started backend on a cluster client, every master flushed."""
    client = make_cluster_client(QueueRedisConfig(redis_cluster.url))
    await client.flushall()
    backend = RedisChannelBackend(client, ChannelConfig(subscribe_timeout=0.5))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()
        await client.aclose()


async def shard_subscribers(node: ClusterNode) -> list[dict[str, str]]:
    """The connections of ``node`` that hold a shard-channel subscription."""
    client = redis.asyncio.Redis(host=node.host, port=node.port)
    try:
        entries: list[dict[str, str]] = await client.client_list()
    finally:
        await client.aclose()
    return [e for e in entries if int(e.get("ssub", "0")) > 0 or int(e.get("sub", "0")) > 0]


def owners(
    cluster: RedisCluster, backend: RedisChannelBackend, streams: list[str]
) -> dict[str, int]:
    """The port of the master owning each stream's live channel."""
    ranges = cluster.slot_ranges()
    owner: dict[str, int] = {}
    for stream_id in streams:
        slot = key_slot(backend.keys(stream_id).live.encode())
        [owner[stream_id]] = [node.port for low, high, node in ranges if low <= slot <= high]
    return owner


def test_the_sharded_append_differs_only_in_its_publish() -> None:
    assert APPEND_SHARDED.count("SPUBLISH") == 1
    assert APPEND_SHARDED.replace("SPUBLISH", "PUBLISH") == APPEND


async def test_one_sharded_connection_per_master_for_all_followers(
    backend: RedisChannelBackend, redis_cluster: RedisCluster
) -> None:
    streams = [f"s{i}" for i in range(30)]
    owner = owners(redis_cluster, backend, streams)
    assert len(set(owner.values())) == 3
    metas = {s: await backend.create(s) for s in streams}
    subscriptions = [(s, await backend.subscribe(s)) for s in streams * 3]

    async def one_per_master() -> bool:
        counts = [len(await shard_subscribers(node)) for node in redis_cluster.nodes]
        return counts == [1, 1, 1]

    await eventually(one_per_master)
    for node in redis_cluster.nodes:
        [entry] = await shard_subscribers(node)
        assert entry["name"] == "streaming_mw"
        assert int(entry["sub"]) == 0  # shard channels, not classic Pub/Sub
        owned = [s for s in streams if owner[s] == node.port]
        assert int(entry["ssub"]) == len(owned)

    for stream_id in streams:
        assert await backend.append(stream_id, stream_id.encode()) == 1
    for stream_id, subscription in subscriptions:
        got = await asyncio.wait_for(subscription.get(), 10)
        assert got == Notice(metas[stream_id].epoch, 1, stream_id.encode())
    for _, subscription in subscriptions:
        subscription.close()


async def next_item(subscription: QueueSubscription) -> object:
    return await asyncio.wait_for(subscription.get(), 10)


async def test_a_lost_shard_connection_resyncs_only_that_shards_followers(
    backend: RedisChannelBackend, redis_cluster: RedisCluster
) -> None:
    streams = [f"r{i}" for i in range(12)]
    metas = {s: await backend.create(s) for s in streams}
    subscriptions = {s: await backend.subscribe(s) for s in streams}
    victim = redis_cluster.nodes[0]
    owner = owners(redis_cluster, backend, streams)
    on_victim = {s for s in streams if owner[s] == victim.port}
    assert on_victim
    assert on_victim != set(streams)

    await asyncio.to_thread(victim.cli, "CLIENT", "KILL", "TYPE", "pubsub")

    for stream_id in sorted(on_victim):
        assert await next_item(subscriptions[stream_id]) is RESYNC
    for stream_id in streams:  # live again on every shard, and no RESYNC elsewhere
        await backend.append(stream_id, b"after")
    for stream_id in streams:
        got = await next_item(subscriptions[stream_id])
        assert got == Notice(metas[stream_id].epoch, 1, b"after")
    for subscription in subscriptions.values():
        subscription.close()


async def test_the_sync_channel_publishes_sharded(
    backend: RedisChannelBackend, redis_cluster: RedisCluster
) -> None:
    import redis.cluster

    from streaming_mw.channels.redis import SyncRedisChannel

    meta = await backend.create("sync")
    subscription = await backend.subscribe("sync")
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        channel = SyncRedisChannel(client)
        assert await asyncio.to_thread(channel.append, "sync", b"x") == 1
    finally:
        client.close()
    assert await next_item(subscription) == Notice(meta.epoch, 1, b"x")
    subscription.close()


async def test_a_stream_that_went_back_after_a_failover_is_answered_with_a_reset(
    backend: RedisChannelBackend, redis_cluster: RedisCluster
) -> None:
    """A promoted replica may miss the last events its master acknowledged: same epoch, a lower
    ``seq``, and the next appends reuse the lost numbers. A follower that already had them must
    not skip their successors silently: it gets ``reset unknown`` (as a client resuming from a
    cursor beyond the stream's end would) and the stream as it now is."""
    channel = AsyncStreamChannel(backend, ChannelConfig())
    await channel.create("back")
    for n in range(1, 6):
        await channel.publish("back", StreamEvent("log", {"n": n}))
    follower = await channel.follow("back")
    got = [await asyncio.wait_for(follower.next(2), 5) for _ in range(5)]
    assert [e.data for e in got if e is not None] == [{"n": n} for n in range(1, 6)]

    keys = backend.keys("back")
    client = make_cluster_client(QueueRedisConfig(redis_cluster.url))
    try:  # what a replica promoted before it had received events 4 and 5 holds
        kept: Any = await client.xrange(keys.events, count=3)
        await client.delete(keys.events)
        for entry_id, fields in kept:
            await client.xadd(keys.events, fields, id=entry_id)
        await client.hset(keys.meta, "seq", 3)
    finally:
        await client.aclose()
    owner = owners(redis_cluster, backend, ["back"])["back"]
    [node] = [n for n in redis_cluster.nodes if n.port == owner]
    await asyncio.to_thread(node.cli, "CLIENT", "KILL", "TYPE", "pubsub")  # -> RESYNC
    await channel.publish("back", StreamEvent("log", {"n": "new 4"}))

    seen: list[StreamEvent] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(seen) < 5 and asyncio.get_running_loop().time() < deadline:
        event = await asyncio.wait_for(follower.next(0.5), 5)
        if event is not None:
            seen.append(event)
    assert seen, "the follower skipped what came after the lost events"
    assert (seen[0].type, seen[0].data) == ("reset", {"reason": "unknown"})
    assert [e.data for e in seen[1:]] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": "new 4"}]
    follower.aclose()
