"""Redis stops answering for a while (SIGSTOP, then SIGCONT) while events are published.

A command sent during the stall times out on the client, which retries it (redis-py's `Retry`,
then the emitter's own retry on `BackendUnavailableError`); when Redis resumes it runs every
copy it had received. Appends carry a producer mark, so each event is stored exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from streaming_mw._redis import make_client
from streaming_mw.channels import AsyncStreamChannel
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.emitters import SSEEmitter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streaming_mw.events import StreamEvent
    from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.chaos]


@pytest.fixture
async def channel(redis_server: RedisServer) -> AsyncIterator[AsyncStreamChannel]:
    # A short socket timeout, so the stall turns into timeouts and retries.
    client = make_client(QueueRedisConfig(redis_server.url, socket_timeout=0.5))
    await client.flushall()
    backend = RedisChannelBackend(client, ChannelConfig())
    await backend.start()
    try:
        yield AsyncStreamChannel(backend, ChannelConfig())
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)  # never leave it stopped for the next test
        await backend.aclose()
        await client.aclose()


def message(event: StreamEvent) -> str:
    assert isinstance(event.data, dict)
    return str(event.data["message"])


async def history(channel: AsyncStreamChannel, stream_id: str) -> list[StreamEvent]:
    follower = await channel.follow(stream_id)
    events = []
    while (event := await follower.next(10)) is not None:
        events.append(event)
        if event.is_terminal:
            break
    return events


async def test_an_append_retried_through_a_stall_is_stored_once(
    channel: AsyncStreamChannel, redis_server: RedisServer
) -> None:
    emitter = SSEEmitter(channel)
    await emitter.open()
    await emitter.log("before")
    os.kill(redis_server.pid, signal.SIGSTOP)
    publish = asyncio.ensure_future(emitter.log("during the stall"))
    await asyncio.sleep(2.0)  # several timeouts and retries, each copy queued in Redis
    os.kill(redis_server.pid, signal.SIGCONT)
    await asyncio.wait_for(publish, 15)
    await emitter.complete(success=True)
    events = await history(channel, emitter.stream_id)
    assert [message(e) for e in events if e.type == "log"] == ["before", "during the stall"]
    assert [e.id for e in events] == [f"{emitter.epoch}-{n}" for n in (1, 2, 3)]


@pytest.mark.slow
async def test_50_streams_through_a_6s_stall_get_every_event_exactly_once(
    channel: AsyncStreamChannel, redis_server: RedisServer
) -> None:
    streams, count = 50, 300
    started = time.monotonic()
    emitters = [SSEEmitter(channel) for _ in range(streams)]
    for emitter in emitters:
        await emitter.open()
    followers = [await channel.follow(e.stream_id) for e in emitters]

    async def work(emitter: SSEEmitter) -> None:
        for n in range(count):
            await emitter.log(f"{n}")
            await asyncio.sleep(0.02)
        await emitter.complete(success=True)

    async def read(index: int) -> list[StreamEvent]:
        events = []
        while (event := await followers[index].next(30)) is not None:
            events.append(event)
            if event.is_terminal:
                return events
        return events

    async def stall() -> None:
        await asyncio.sleep(1.0)
        os.kill(redis_server.pid, signal.SIGSTOP)
        await asyncio.sleep(6.0)
        os.kill(redis_server.pid, signal.SIGCONT)

    results = await asyncio.gather(
        stall(), *(work(e) for e in emitters), *(read(i) for i in range(streams))
    )
    live = [events for events in results[1 + streams :] if events is not None]
    expected = [str(n) for n in range(count)]
    for emitter, events in zip(emitters, live, strict=True):
        for label, seen in (
            ("live", events),
            ("replay", await history(channel, emitter.stream_id)),
        ):
            messages = [message(e) for e in seen if e.type == "log"]
            assert messages == expected, (label, emitter.stream_id)
            assert [e.id for e in seen] == [f"{emitter.epoch}-{n}" for n in range(1, count + 2)], (
                label,
                emitter.stream_id,
            )
    print(f"50 streams x {count} events through a 6 s stall: {time.monotonic() - started:.1f} s")
