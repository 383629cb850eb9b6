"""`RedisFanout` through `RedisChannelBackend`: one shared Pub/Sub connection per backend,
channels unsubscribed with their last follower, and recovery after the server restarts (seen
by raw subscriptions and by a `Follower` whose stream comes back with a new epoch)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from streaming_mw._redis import make_client
from streaming_mw.channels import AsyncStreamChannel
from streaming_mw.channels.base import RESYNC, Notice
from streaming_mw.channels.fanout import _buffered
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.events import StreamEvent
from tests.helpers.leases import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio

    from streaming_mw.channels import Follower, StreamMeta, Subscription
    from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def backend(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> AsyncIterator[RedisChannelBackend]:
    """A started Redis backend on its own retrying client; empty database."""
    client = make_client(QueueRedisConfig(redis_url))
    backend = RedisChannelBackend(client, ChannelConfig(subscribe_timeout=0.5))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()
        await client.aclose()


def payload(n: int) -> bytes:
    return f"event-{n}".encode()


def notice(meta: StreamMeta, n: int) -> Notice:
    return Notice(meta.epoch, n, payload(n))


async def subscriber_connections(client: redis.asyncio.Redis) -> int:
    """Connections of the server in Pub/Sub mode."""
    entries: list[dict[str, str]] = await client.client_list()
    return sum(
        1
        for entry in entries
        if any(int(entry.get(field, "0")) > 0 for field in ("sub", "psub", "ssub"))
    )


async def channels(client: redis.asyncio.Redis) -> set[bytes]:
    return {
        name if isinstance(name, bytes) else name.encode()
        for name in await client.pubsub_channels()
    }


async def test_one_pubsub_connection_for_all_followers(
    backend: RedisChannelBackend, redis_client: redis.asyncio.Redis
) -> None:
    streams = [f"s{i}" for i in range(50)]
    metas = [await backend.create(stream_id) for stream_id in streams]
    subscriptions = [await backend.subscribe(stream_id) for stream_id in streams * 4]
    assert len(subscriptions) == 200

    async def one_connection() -> bool:
        return await subscriber_connections(redis_client) == 1

    await eventually(one_connection)
    live = {backend.keys(stream_id).live.encode() for stream_id in streams}
    assert await channels(redis_client) == live
    numsub = await redis_client.pubsub_numsub(*live)
    assert {count for _, count in numsub} == {1}  # one server-side subscriber per channel

    await backend.append("s7", payload(1))
    for subscription in subscriptions[7::50]:
        assert await asyncio.wait_for(subscription.get(), 10) == notice(metas[7], 1)
    for subscription in subscriptions:
        subscription.close()


async def test_last_follower_leaving_unsubscribes_the_channel(
    backend: RedisChannelBackend, redis_client: redis.asyncio.Redis
) -> None:
    meta = await backend.create("a")
    await backend.create("b")
    a1, a2, b1 = [await backend.subscribe(s) for s in ("a", "a", "b")]
    live_a, live_b = (backend.keys(s).live.encode() for s in ("a", "b"))
    assert await channels(redis_client) == {live_a, live_b}

    a1.close()
    await backend.append("a", payload(1))
    assert await asyncio.wait_for(a2.get(), 10) == notice(meta, 1)
    assert await channels(redis_client) == {live_a, live_b}  # a2 still follows "a"

    a2.close()

    async def a_unsubscribed() -> bool:
        return await channels(redis_client) == {live_b}

    await eventually(a_unsubscribed)
    again = await backend.subscribe("a")  # and a new follower subscribes it again
    assert await channels(redis_client) == {live_a, live_b}
    await backend.append("a", payload(2))
    assert await asyncio.wait_for(again.get(), 10) == notice(meta, 2)
    again.close()
    b1.close()

    async def none_left() -> bool:
        return await channels(redis_client) == set()

    await eventually(none_left)


async def test_resubscribe_right_after_the_last_follower_left(
    backend: RedisChannelBackend, redis_client: redis.asyncio.Redis
) -> None:
    meta = await backend.create("a")
    for n in range(1, 21):  # leave and come back before the unsubscribe task ran
        first = await backend.subscribe("a")
        first.close()
        second = await backend.subscribe("a")
        await backend.append("a", payload(n))
        assert await asyncio.wait_for(second.get(), 10) == notice(meta, n)
        second.close()


async def wait_resync(subscription: Subscription) -> None:
    assert await asyncio.wait_for(subscription.get(), 10) is RESYNC


async def check_recovery(backend: RedisChannelBackend, subscriptions: list[Subscription]) -> None:
    """Every subscription gets RESYNC, then live appends of the re-created streams again."""
    await asyncio.gather(*(wait_resync(s) for s in subscriptions))
    assert backend.fanout.reconnects == 1
    assert backend.fanout.healthy
    metas = {}
    for stream_id in ("a", "b"):
        metas[stream_id] = await backend.create(stream_id)  # the producer comes back (empty)
        await backend.append(stream_id, payload(1))
    for subscription, stream_id in zip(subscriptions, "aab", strict=True):
        expected = notice(metas[stream_id], 1)
        assert await asyncio.wait_for(subscription.get(), 10) == expected, stream_id
    for subscription in subscriptions:
        subscription.close()


async def subscribe_three(backend: RedisChannelBackend) -> list[Subscription]:
    meta = await backend.create("a")
    await backend.create("b")
    subscriptions: list[Subscription] = [await backend.subscribe(s) for s in ("a", "a", "b")]
    await backend.append("a", payload(1))
    for subscription in subscriptions[:2]:
        assert await asyncio.wait_for(subscription.get(), 10) == notice(meta, 1)
    return subscriptions


async def test_reader_recovers_after_a_quick_restart(
    backend: RedisChannelBackend, redis_server: RedisServer
) -> None:
    subscriptions = await subscribe_three(backend)
    redis_server.kill()
    redis_server.start()  # empty, and back before the reader ran again
    await check_recovery(backend, subscriptions)


async def test_reader_recovers_after_an_outage(
    backend: RedisChannelBackend, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="streaming_mw.channels")
    subscriptions = await subscribe_three(backend)
    redis_server.kill()

    async def noticed() -> bool:
        return any("connection lost" in record.getMessage() for record in caplog.records)

    await eventually(noticed, timeout=10)
    redis_server.start()
    await check_recovery(backend, subscriptions)


async def test_new_followers_after_a_restart(
    backend: RedisChannelBackend, redis_server: RedisServer
) -> None:
    await backend.create("a")
    old = await backend.subscribe("a")
    redis_server.kill()
    redis_server.start()
    meta = await backend.create("b")
    new = await asyncio.wait_for(backend.subscribe("b"), 10)
    await backend.append("b", payload(1))
    assert await asyncio.wait_for(new.get(), 10) == notice(meta, 1)
    old.close()
    new.close()


async def drain(follower: Follower) -> list[StreamEvent]:
    """Every event up to the terminal one."""
    events: list[StreamEvent] = []
    while not follower.finished:
        event = await asyncio.wait_for(follower.next(10), 15)
        assert event is not None, f"no event after {[e.id for e in events]}"
        events.append(event)
    return events


async def publish(channel: AsyncStreamChannel, stream_id: str, numbers: range) -> None:
    for n in numbers:
        assert await channel.publish(stream_id, StreamEvent("log", {"n": n})) == n


def ids(meta: StreamMeta, numbers: range) -> list[str | None]:
    return [f"{meta.epoch}-{n}" for n in numbers]


@pytest.mark.parametrize("outage", ["quick_restart", "noticed_outage"])
async def test_follower_survives_a_redis_restart_and_new_epoch(
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    outage: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="streaming_mw.channels")
    client = make_client(QueueRedisConfig(redis_url))
    config = ChannelConfig(subscribe_timeout=0.5)
    backend = RedisChannelBackend(client, config)
    await backend.start()
    reader: asyncio.Task[list[StreamEvent]] | None = None
    try:
        channel = AsyncStreamChannel(backend, config)
        old = await channel.create("job")
        await publish(channel, "job", range(1, 4))
        follower = await channel.follow("job")
        first = [await asyncio.wait_for(follower.next(10), 15) for _ in range(3)]
        assert [e.id if e else None for e in first] == ids(old, range(1, 4))
        reader = asyncio.create_task(drain(follower))

        redis_server.kill()
        if outage == "noticed_outage":

            async def noticed() -> bool:
                return any("connection lost" in r.getMessage() for r in caplog.records)

            await eventually(noticed, timeout=10)
        redis_server.start()  # empty: the producer re-creates the stream
        new = await asyncio.wait_for(channel.create("job"), 10)
        assert new.epoch != old.epoch
        await asyncio.wait_for(publish(channel, "job", range(1, 3)), 10)
        done = StreamEvent("complete", {"n": 3})
        assert await asyncio.wait_for(channel.publish("job", done), 10) == 3

        events = await asyncio.wait_for(reader, 30)
        follower.aclose()
        assert (events[0].type, events[0].data) == ("reset", {"reason": "epoch_changed"})
        assert [e.id for e in events[1:]] == ids(new, range(1, 4))
    finally:
        if reader is not None and not reader.done():
            reader.cancel()
        await backend.aclose()
        await client.aclose()


async def test_reader_survives_an_unexpected_error_and_delivers_after_it(
    backend: RedisChannelBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect racing a dying socket can raise something other than a connection error
    (uvloop: ``RuntimeError: ... the handler is closed``). Before, that ended the reader task
    and every follower of the process waited forever."""
    meta = await backend.create("a")
    subscription = await backend.subscribe("a")
    pubsub = backend.fanout._pubsub
    assert pubsub is not None
    real = pubsub.get_message
    failures = [RuntimeError("unable to perform operation: the handler is closed")]

    async def flaky(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pubsub, "get_message", flaky)
    # the reader drops the suspect connection and reconnects: followers are told to catch up
    assert await asyncio.wait_for(subscription.get(), 10) is RESYNC
    assert not failures
    assert backend.fanout.healthy
    await backend.append("a", payload(1))
    assert await asyncio.wait_for(subscription.get(), 10) == notice(meta, 1)
    subscription.close()


async def test_the_reader_tells_a_burst_already_read_from_its_last_message(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    """The reader yields to the loop after a message only when no more of a burst is already
    read (hiredis's buffer): the burst's writes go out together, a lone event's at once."""
    client = make_client(QueueRedisConfig(redis_url))
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("burst")
        assert (await pubsub.get_message(timeout=5) or {}).get("type") == "subscribe"
        assert not _buffered(pubsub)
        async with redis_client.pipeline(transaction=False) as pipe:
            for n in range(3):
                pipe.publish("burst", payload(n))
            await pipe.execute()
        await asyncio.sleep(0.2)  # all three in the socket: the first read takes them together
        seen = []
        for _ in range(3):
            message = await pubsub.get_message(timeout=5)
            assert message is not None
            seen.append((message["data"], _buffered(pubsub)))
        assert seen == [(payload(0), True), (payload(1), True), (payload(2), False)]
    finally:
        await pubsub.aclose()
        await client.aclose()
