"""Redis Cluster: detected at startup, one slot per script, sharded live fan-out."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from streaming_mw._redis import make_cluster_client, redis_db
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.config import ChannelConfig, QueueRedisConfig, StreamLeaseConfig
from streaming_mw.errors import ConfigurationError
from streaming_mw.jobs import JobEnvelope, JobState, QueueConfig, RedisJobQueue
from streaming_mw.leases import RedisLeaseLimiter
from streaming_mw.leases.fingerprint import LeaseConfigBeacon
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


async def test_every_script_runs_on_one_slot_of_the_cluster(redis_cluster: RedisCluster) -> None:
    """Each Lua script of every backend runs on the cluster, and the keys of each call share a
    slot (redis-py refuses a multi-slot EVALSHA on a cluster; Redis refuses a script touching a
    key of another slot)."""
    client = make_cluster_client(QueueRedisConfig(redis_cluster.url))
    await client.flushall()
    calls: list[tuple[str, list[bytes | str]]] = []
    evalsha = client.evalsha

    async def spy(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        calls.append((sha, list(keys_and_args[:numkeys])))
        return await evalsha(sha, numkeys, *keys_and_args)

    client.evalsha = spy  # type: ignore[method-assign]
    limiter = RedisLeaseLimiter(client, StreamLeaseConfig(limit=2, ttl_seconds=30))
    capped = RedisLeaseLimiter(client, StreamLeaseConfig(limit=2, global_limit=3))
    beacon = LeaseConfigBeacon(client, StreamLeaseConfig())
    channels = RedisChannelBackend(client, ChannelConfig())
    queue = RedisJobQueue(client, QueueConfig())
    try:
        lease = await limiter.acquire("alice")
        await limiter.refresh(lease)
        assert await limiter.active("alice") == 1
        await limiter.release(lease)
        for user in ("alice", "bob"):  # with a global limit: the user's set and the global one
            capped_lease = await capped.acquire(user)
            await capped.refresh(capped_lease)
            await capped.release(capped_lease)
        assert await beacon.start() == []
        await beacon.aclose()

        await channels.create("s1", owner="alice")
        assert await channels.append("s1", b"x") == 1

        for n in (1, 2):
            await queue.enqueue(JobEnvelope(f"job-{n}", "op", {}, f"stream-{n}"))
        first = await queue.fetch("w1", 0.1)
        second = await queue.fetch("w1", 0.1)
        assert first is not None
        assert second is not None
        assert await queue.heartbeat("w1", first)
        await queue.finish(first, JobState.DONE)
        await queue.retry_later(second, 0.0, "boom")
        await asyncio.sleep(0.01)  # the retry is due 1 ms after it was scheduled
        assert await queue.promote_due() == 1
        again = await queue.fetch("w1", 0.1)
        assert again is not None
        await queue.dead_letter(again, "boom again")
        await queue.enqueue(JobEnvelope("job-3", "op", {}, "stream-3"))
        assert await queue.request_cancel("job-3")
    finally:
        await client.aclose()

    scripts = [
        limiter._acquire, limiter._refresh, limiter._active, limiter._release, beacon._announce,
        channels._create, channels._append, *queue._scripts.values(),
    ]  # fmt: skip
    assert {sha for sha, _ in calls} == {script.sha for script in scripts}
    for sha, keys in calls:
        slots = {key_slot(key.encode() if isinstance(key, str) else key) for key in keys}
        assert len(slots) == 1, (sha, keys)
