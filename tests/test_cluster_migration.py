"""A slot migration on a Redis Cluster while followers read a live stream and a producer
publishes: the slot of the stream's hash tag moves from its master to another (``CLUSTER
SETSLOT … IMPORTING / MIGRATING``, ``MIGRATE … KEYS``, ``CLUSTER SETSLOT … NODE``).

The old owner un-subscribes the shard channel of the moved slot (its subscribers receive a
``sunsubscribe``); the followers' process must subscribe it again on the new owner and fill
what it missed from the stream's history. Events published while the slot moves go out on the
new owner (``ASK``) before anyone listens there. Every follower must end with every event
exactly once, in order (or after an in-band ``reset``), and none may hang.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from redis.crc import key_slot

from streaming_mw._redis import make_cluster_client
from streaming_mw.channels.redis import RedisChannelBackend, StreamKeys
from streaming_mw.channels.stream import AsyncStreamChannel
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.errors import BackendUnavailableError
from streaming_mw.events import StreamEvent
from tests.helpers.redis_cluster import ClusterNode, RedisCluster, outcome, own_cluster, read_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


pytestmark = [pytest.mark.redis, pytest.mark.slow]

EVENTS = 80
MOVE_AFTER = 20
FOLLOWERS = 10
DEADLINE = 20.0
FILLER = 60
"""Other keys in the stream's slot, so the slot moves in several batches while events go on."""
BATCH = 7


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 masters of this test's own: it moves a slot, which the session cluster must not see."""
    with own_cluster(tmp_path) as own:
        yield own


@pytest.fixture
async def followers_side(cluster: RedisCluster) -> AsyncIterator[AsyncStreamChannel]:
    """The web process: a started backend (the sharded subscriber) on a client of its own."""
    client = make_cluster_client(QueueRedisConfig(cluster.url))
    config = ChannelConfig(subscribe_timeout=0.5)
    backend = RedisChannelBackend(client, config)
    await backend.start()
    try:
        yield AsyncStreamChannel(backend, config)
    finally:
        await backend.aclose()
        await client.aclose()


@pytest.fixture
async def producer_side(cluster: RedisCluster) -> AsyncIterator[AsyncStreamChannel]:
    """The worker process: publishes on a client of its own, so the followers' client sees no
    ``MOVED`` of the producer's commands."""
    client = make_cluster_client(QueueRedisConfig(cluster.url))
    config = ChannelConfig()
    try:
        yield AsyncStreamChannel(RedisChannelBackend(client, config), config)
    finally:
        await client.aclose()


def node_id(node: ClusterNode) -> str:
    return node.cli("CLUSTER", "MYID").strip()


def migrate_slot(cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode) -> int:
    """Move ``slot`` from ``source`` to ``target`` as ``redis-cli --cluster reshard`` does, a
    few keys per ``MIGRATE``, pausing between batches; returns how many keys moved."""
    source_id, target_id = node_id(source), node_id(target)
    target.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    source.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    moved = 0
    while keys := source.cli("CLUSTER", "GETKEYSINSLOT", str(slot), str(BATCH)).split():
        source.cli("MIGRATE", target.host, str(target.port), "", "0", "5000", "KEYS", *keys)
        moved += len(keys)
        time.sleep(0.05)
    for node in (target, source, *(n for n in cluster.nodes if n not in (source, target))):
        node.cli("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
    return moved


async def publish(channel: AsyncStreamChannel, event: StreamEvent) -> int:
    """Publish like an emitter, riding over ``TRYAGAIN`` while keys are half moved. Returns
    how many attempts failed."""
    deadline = time.monotonic() + 10
    failed = 0
    while True:
        try:
            await channel.publish("moving", event)
            return failed
        except BackendUnavailableError:
            failed += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def shard_subscribers(node: ClusterNode) -> int:
    return sum(" ssub=1 " in line for line in node.cli("CLIENT", "LIST").splitlines())


@pytest.mark.timeout(60)
async def test_followers_move_with_the_slot_of_their_stream(
    cluster: RedisCluster,
    followers_side: AsyncStreamChannel,
    producer_side: AsyncStreamChannel,
) -> None:
    started = time.monotonic()
    await producer_side.create("moving")
    keys = StreamKeys(ChannelConfig().key_prefix, "moving")
    slot = key_slot(keys.meta.encode())
    source = cluster.master_for(keys.meta)
    target = next(node for node in cluster.nodes if node is not source)
    followers = [await followers_side.follow("moving") for _ in range(FOLLOWERS)]
    readers = [asyncio.create_task(read_all(f)) for f in followers]
    client = make_cluster_client(QueueRedisConfig(cluster.url))
    try:  # keys of the same hash tag that are not the stream's
        for n in range(FILLER):
            await client.set(f"stream:{{moving}}:filler:{n}", n)
    finally:
        await client.aclose()

    failed = 0
    migrating = asyncio.Event()

    async def produce() -> None:
        nonlocal failed
        for i in range(1, EVENTS + 1):
            if i == MOVE_AFTER:
                migrating.set()
            failed += await publish(producer_side, StreamEvent("progress", {"i": i}))
            await asyncio.sleep(0.02)

    producer = asyncio.create_task(produce())
    await migrating.wait()
    assert shard_subscribers(source) == 1
    moved = await asyncio.to_thread(migrate_slot, cluster, slot, source, target)
    await asyncio.wait_for(producer, DEADLINE)
    assert cluster.master_for(keys.meta) is target
    await publish(producer_side, StreamEvent("complete", {"success": True}))

    done, pending = await asyncio.wait(readers, timeout=DEADLINE)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} follower(s) hung"
    outcomes = [outcome(task.result(), EVENTS) for task in done]
    assert shard_subscribers(target) == 1  # the channel followed its slot
    assert shard_subscribers(source) == 0
    print(
        f"slot {slot} moved ({moved} keys): {outcomes.count('continued')} continued, "
        f"{outcomes.count('reset')} reset, {failed} failed publish attempt(s), "
        f"{time.monotonic() - started:.1f}s"
    )
