"""The local Redis Cluster the session fixture starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tests.helpers.redis_cluster import BUS_OFFSET, free_cluster_port

if TYPE_CHECKING:
    from tests.helpers.redis_cluster import RedisCluster

pytestmark = pytest.mark.redis


def test_cluster_ports_leave_room_for_the_bus() -> None:
    taken: set[int] = set()
    for _ in range(20):
        port = free_cluster_port(taken)
        assert port + BUS_OFFSET <= 65535
        assert port not in taken
        assert port + BUS_OFFSET not in taken
        taken.update((port, port + BUS_OFFSET))


async def test_cluster_has_three_masters_sharing_every_slot(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.nodes) == 3
    for node in redis_cluster.nodes:
        assert node.info_field("cluster", "cluster_enabled") == "1"
    client = AsyncRedisCluster.from_url(redis_cluster.url)
    try:
        info = await client.cluster_info()
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == 16384
        assert len(client.get_primaries()) == 3
        owners = {redis_cluster.master_for(f"k{{{n}}}").port for n in range(30)}
        assert len(owners) == 3
    finally:
        await client.aclose()
