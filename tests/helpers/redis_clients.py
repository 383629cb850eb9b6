"""Redis clients for the contract suites, on the session redis-server or the session cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from streaming_mw._redis import make_client, make_cluster_client
from streaming_mw.config import QueueRedisConfig

if TYPE_CHECKING:
    import pytest

    from streaming_mw._redis import AsyncRedis
    from tests.helpers.redis_cluster import RedisCluster
    from tests.helpers.redis_server import RedisServer

RedisKind = Literal["redis", "cluster"]


def redis_url_of(request: pytest.FixtureRequest, kind: RedisKind) -> str:
    """The URL of the session redis-server (started again if a test stopped it) or of one node
    of the session cluster."""
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    server: RedisServer = request.getfixturevalue("redis_server")
    if not server.is_running():  # requested dynamically: the autouse restart misses it
        server.start()
    return server.url


def client_for(url: str, kind: RedisKind) -> AsyncRedis:
    """The client the container would build for ``url``."""
    config = QueueRedisConfig(url)
    return make_cluster_client(config) if kind == "cluster" else make_client(config)


async def fresh_client(request: pytest.FixtureRequest, kind: RedisKind) -> AsyncRedis:
    """A client of ``kind`` on an empty Redis (every master flushed on a cluster)."""
    client = client_for(redis_url_of(request, kind), kind)
    await client.flushall()
    return client
