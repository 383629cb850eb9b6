"""Connections on a Redis Cluster: commands take turns (`TurnTakingCluster`), so a burst does
not open a connection per concurrent command on every master."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from streaming_mw._redis import CLIENT_NAME, TurnTakingCluster, make_cluster_client
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.config import ChannelConfig, QueueRedisConfig

if TYPE_CHECKING:
    from tests.helpers.redis_cluster import RedisCluster

pytestmark = pytest.mark.redis


async def ours_per_node(cluster: RedisCluster) -> list[int]:
    """Connections named by the library on each node."""
    counts = []
    for node in cluster.nodes:
        admin = redis.asyncio.Redis(host=node.host, port=node.port)
        try:
            entries: list[dict[str, str]] = await admin.client_list()
        finally:
            await admin.aclose()
        counts.append(sum(1 for e in entries if e.get("name") == CLIENT_NAME))
    return counts


@pytest.mark.timeout(60)
async def test_a_burst_of_followers_takes_turns_on_few_connections(
    redis_cluster: RedisCluster,
) -> None:
    started = time.monotonic()
    before = await ours_per_node(redis_cluster)
    config = QueueRedisConfig(redis_cluster.url)  # max_connections=3: 2 commands at once
    client = make_cluster_client(config)
    assert isinstance(client, TurnTakingCluster)
    backend = RedisChannelBackend(client, ChannelConfig())
    await backend.start()
    try:
        streams = [f"burst{i}" for i in range(60)]
        await asyncio.gather(*(backend.create(s) for s in streams))
        await asyncio.gather(*(backend.append(s, b"x") for s in streams))
        # what 300 followers opening at once ask: subscribe (EXISTS), meta (a pipeline), history
        subscriptions = await asyncio.gather(*(backend.subscribe(s) for s in streams * 5))
        metas = await asyncio.gather(*(backend.meta(s) for s in streams * 5))
        pages = await asyncio.gather(*(backend.read(s, 0, 10) for s in streams * 5))
        assert all(m is not None and m.last_seq == 1 for m in metas)
        assert all(page == [(1, b"x")] for page in pages)
        during = await ours_per_node(redis_cluster)
        added = [now - then for now, then in zip(during, before, strict=True)]
        # per master: one sharded subscriber, at most 2 command connections; + 1 slot-map query
        assert all(n <= 1 + (config.max_connections - 1) + 1 for n in added), added
        assert sum(added) <= len(added) * config.max_connections + 1, added
        for subscription in subscriptions:
            subscription.close()
    finally:
        await backend.aclose()
        await client.aclose()
    print(f"connections added per node: {added}, {time.monotonic() - started:.1f}s")


async def test_pipelines_spanning_every_master_share_one_turn(
    redis_cluster: RedisCluster,
) -> None:
    """One turn (max_connections=2): 20 pipelines spanning every master, started at once, run
    one after the other and all complete."""
    client = make_cluster_client(QueueRedisConfig(redis_cluster.url, max_connections=2))
    try:

        async def spanning(n: int) -> list[object]:
            async with client.pipeline(transaction=False) as pipe:
                for i in range(6):
                    pipe.set(f"span{n}:{i}", i)
                    pipe.get(f"span{n}:{i}")
                return list(await pipe.execute())

        results = await asyncio.wait_for(asyncio.gather(*(spanning(n) for n in range(20))), 20)
        assert all(r == [x for i in range(6) for x in (True, str(i).encode())] for r in results)
    finally:
        await client.aclose()
