"""A rolling deploy, scaled down: two uvicorn processes on one Redis, restarted one after the
other while a publisher (another process's role, here a thread with a plain Redis client)
appends events to every stream. Each client behaves like a browser ``EventSource`` behind a
load balancer: after each end of its response it reconnects, to the other process, with
``Last-Event-ID``. Every client ends with every event exactly once, in order."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

import redis

from streaming_mw.channels.redis import SyncRedisChannel
from streaming_mw.events import EventType, StreamEvent
from tests.helpers.sse_client import IncompleteBody, SSEClient

if TYPE_CHECKING:
    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

STREAMS = 20
EVENTS = 800
RESTARTS = 5
ROUND_PAUSE = 0.01
"""Seconds between two rounds of one event per stream: about 10 s of publishing."""


def _publish(redis_url: str, stream_ids: list[str]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        channel = SyncRedisChannel(client)
        for index in range(EVENTS):
            for stream_id in stream_ids:
                channel.publish(stream_id, StreamEvent(EventType.LOG, {"index": index}))
            time.sleep(ROUND_PAUSE)
        for stream_id in stream_ids:
            channel.publish(stream_id, StreamEvent(EventType.COMPLETE, {"success": True}))
    finally:
        client.close()


class Browser:
    """One EventSource: reconnects to the other server after every end of its response."""

    def __init__(self, stream_id: str, servers: list[UvicornProcess]) -> None:
        self.stream_id = stream_id
        self.servers = servers
        self.seqs: list[int] = []
        self.connections = 0
        self.cut = 0
        """Responses that ended without a clean end of body (there should be none)."""
        self.last_event_id: str | None = None

    async def run(self) -> None:
        turn = 0
        while True:
            server = self.servers[turn % len(self.servers)]
            turn += 1
            headers = {"last-event-id": self.last_event_id} if self.last_event_id else {}
            try:
                path = f"/streams/{self.stream_id}"
                async with SSEClient.connect(server.base_url, path, headers=headers) as client:
                    self.connections += 1
                    if client.status == 200 and await self._read(client):
                        return
            except IncompleteBody:
                self.cut += 1
            except (OSError, TimeoutError):
                pass  # that server is restarting: try the other one
            await asyncio.sleep(0.05)

    async def _read(self, client: SSEClient) -> bool:
        async for event in client.events(timeout=10):
            if event.id is not None:
                self.seqs.append(int(event.id.rsplit("-", 1)[1]))
                self.last_event_id = event.id
            if event.event == "complete":
                return True
        return False


async def test_a_rolling_deploy_loses_and_repeats_nothing(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    started = time.monotonic()
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    stream_ids = [f"roll-{n}" for n in range(STREAMS)]
    channel = SyncRedisChannel(client)
    for stream_id in stream_ids:
        channel.create(stream_id)
    client.close()
    env = {"REDIS_URL": redis_url, "STREAMING_DRAIN_TIMEOUT": "1"}
    servers = [uvicorn_process("tests.apps.drain:app", env) for _ in range(2)]
    browsers = [Browser(stream_id, servers) for stream_id in stream_ids]
    reading = [asyncio.create_task(b.run()) for b in browsers]
    publishing = asyncio.create_task(asyncio.to_thread(_publish, redis_url, stream_ids))

    for restart in range(RESTARTS):
        await asyncio.sleep(1.0)
        server = servers[restart % 2]
        server.process_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 10)
        server.start()
    await asyncio.wait_for(publishing, 40)
    await asyncio.wait_for(asyncio.gather(*reading), 20)

    elapsed = time.monotonic() - started
    connections = sum(b.connections for b in browsers)
    cuts = sum(b.cut for b in browsers)
    print(
        f"rolling deploy: {STREAMS} streams x {EVENTS} events, {RESTARTS} restarts, "
        f"{connections} connections, {cuts} unclean ends, {elapsed:.1f}s"
    )
    for browser in browsers:
        assert browser.seqs == list(range(1, EVENTS + 2)), browser.stream_id
        assert browser.cut == 0
    assert connections > STREAMS  # they did reconnect
