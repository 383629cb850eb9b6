"""Redis Cluster: detected at startup, one slot per script, sharded live fan-out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from streaming_mw._redis import redis_db
from streaming_mw.errors import ConfigurationError
from streaming_mw.runtime import StreamingContainer
from streaming_mw.runtime.startup import start_container, stop_container

if TYPE_CHECKING:
    from tests.helpers.redis_cluster import RedisCluster
    from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "STREAMING_MODE", "STREAMING_REDIS_CLUSTER"):
        monkeypatch.delenv(name, raising=False)


def mode_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Redis backends at" in r.getMessage()]


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://h:1", 0),
        ("redis://h:1/0", 0),
        ("redis://h:1/3", 3),
        ("rediss://u:p@h/5?ssl_cert_reqs=none", 5),
        ("unix:///run/redis.sock?db=2", 2),
        ("unix:///run/redis/7", 0),
    ],
)
def test_redis_db_reads_path_and_query(url: str, db: int) -> None:
    assert redis_db(url) == db


async def test_a_cluster_node_url_starts_a_cluster_client(
    redis_cluster: RedisCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_cluster.nodes[1].url)
    container = StreamingContainer()
    with caplog.at_level(logging.INFO, logger="streaming_mw"):
        await start_container(container)
    try:
        assert container.mode() == "redis"
        assert isinstance(container.redis_client(), AsyncRedisCluster)
        [line] = mode_lines(caplog)
        assert line.endswith("(Redis Cluster)")
    finally:
        await stop_container(container)


async def test_a_single_node_url_starts_a_plain_client(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    container = StreamingContainer()
    with caplog.at_level(logging.INFO, logger="streaming_mw"):
        await start_container(container)
    try:
        assert type(container.redis_client()) is Redis
        [line] = mode_lines(caplog)
        assert line.endswith("(single node)")
    finally:
        await stop_container(container)


async def test_the_override_wins_over_detection(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_cluster.url)
    monkeypatch.setenv("STREAMING_REDIS_CLUSTER", "false")
    container = StreamingContainer()
    await start_container(container)
    try:
        assert type(container.redis_client()) is Redis  # a proxy in front would look like this
    finally:
        await stop_container(container)


@pytest.mark.parametrize("mode", ["auto", "redis"])
async def test_a_database_other_than_0_on_a_cluster_fails_startup(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_cluster.url.removesuffix("/0") + "/2")
    monkeypatch.setenv("STREAMING_MODE", mode)
    container = StreamingContainer()
    with pytest.raises(ConfigurationError, match="database 2"):
        await start_container(container)
    await stop_container(container)
