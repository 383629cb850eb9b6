"""A rolling deploy: two uvicorn processes on one Redis, restarted one after the other while a
publisher (another process's role, here a thread with a plain Redis client) appends events to
every stream at a steady pace. Each client behaves like a browser ``EventSource`` behind a load
balancer: when its response ends (or the connection fails) it waits the reconnection time the
server last sent (``retry:``), then reconnects, to the other process, with ``Last-Event-ID``;
a non-200 answer would end it for good. Every client ends with every event exactly once, in
order, and no response is cut.

At the issue's scale: 50 streams x 2,000 events, 5 restarts, the events paced over 60 s (about
70 s in all on 2 cores). ``ROLLING_DEPLOY_SCALE=small`` runs 20 streams x 800 events over 30 s,
for a quicker run while working on the drain.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import redis

from streaming_mw.channels.redis import SyncRedisChannel
from streaming_mw.events import EventType, StreamEvent
from tests.helpers.sse_client import IncompleteBody, SSEClient

if TYPE_CHECKING:
    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RESTARTS = 5
DEFAULT_RETRY_MS = 3000
"""A browser's reconnection time until the server sends ``retry:``."""


@dataclass(frozen=True, slots=True)
class Scale:
    streams: int
    events: int
    publish_for: float
    """Seconds the publisher spreads its events over (the restarts happen meanwhile)."""


FULL = Scale(streams=50, events=2000, publish_for=60.0)
SMALL = Scale(streams=20, events=800, publish_for=30.0)


def _publish(redis_url: str, stream_ids: list[str], scale: Scale, done: list[float]) -> None:
    """One event per stream per round, rounds evenly paced over ``scale.publish_for``."""
    client = redis.Redis.from_url(redis_url)
    try:
        channel = SyncRedisChannel(client)
        started = time.monotonic()
        for index in range(scale.events):
            for stream_id in stream_ids:
                channel.publish(stream_id, StreamEvent(EventType.LOG, {"index": index}))
            pause = started + (index + 1) * scale.publish_for / scale.events - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        for stream_id in stream_ids:
            channel.publish(stream_id, StreamEvent(EventType.COMPLETE, {"success": True}))
        done.append(time.monotonic() - started)
    finally:
        client.close()


class Browser:
    """One EventSource: reconnects to the other server after every end of its response, once
    the reconnection time has passed, with ``Last-Event-ID``."""

    def __init__(self, stream_id: str, servers: list[UvicornProcess]) -> None:
        self.stream_id = stream_id
        self.servers = servers
        self.seqs: list[int] = []
        self.connections = 0
        self.cut = 0
        """Responses that ended without a clean end of body (there should be none)."""
        self.failed_connections = 0
        """Connections refused, or closed before an answer: a restarting server."""
        self.errors: list[str] = []
        """``error`` events (without an id: not events of the stream) and their reason."""
        self.refused: list[int] = []
        """Non-200 answers: a browser's EventSource would have given up (there should be none)."""
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        """The last ``retry:`` any response sent (the browser's reconnection time)."""
        self.waited: list[float] = []
        self.without_retry = 0
        """Responses that ended without a ``retry:`` field (there should be none)."""

    async def run(self) -> None:
        turn = 0
        while True:
            server = self.servers[turn % len(self.servers)]
            turn += 1
            headers = {"last-event-id": self.last_event_id} if self.last_event_id else {}
            path = f"/streams/{self.stream_id}"
            answered = False
            try:
                async with SSEClient.connect(server.base_url, path, headers=headers) as client:
                    answered = True
                    self.connections += 1
                    if client.status != 200:
                        self.refused.append(client.status)
                        return
                    try:
                        if await self._read(client):
                            return
                    finally:
                        if client.retry is None:
                            self.without_retry += 1
                        else:
                            self.retry_ms = client.retry
            except (OSError, TimeoutError, IncompleteBody) as exc:
                if answered and isinstance(exc, IncompleteBody):
                    self.cut += 1
                else:  # that server is restarting: a network error, the browser retries
                    self.failed_connections += 1
            wait = (self.retry_ms or DEFAULT_RETRY_MS) / 1000  # EventSource: wait, reconnect
            self.waited.append(wait)
            await asyncio.sleep(wait)

    async def _read(self, client: SSEClient) -> bool:
        async for event in client.events(timeout=15):
            if event.id is not None:
                self.seqs.append(int(event.id.rsplit("-", 1)[1]))
                self.last_event_id = event.id
            if event.event == "complete":
                return True
            if event.event == "error":
                self.errors.append(json.loads(event.data).get("reason", "?"))
        return False


async def _rolling_deploy(
    uvicorn_process: StartUvicornProcess, redis_url: str, scale: Scale
) -> None:
    started = time.monotonic()
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    stream_ids = [f"roll-{n}" for n in range(scale.streams)]
    channel = SyncRedisChannel(client)
    for stream_id in stream_ids:
        channel.create(stream_id)
    client.close()
    env = {"REDIS_URL": redis_url, "STREAMING_DRAIN_TIMEOUT": "1"}
    servers = [uvicorn_process("tests.apps.drain:app", env) for _ in range(2)]
    browsers = [Browser(stream_id, servers) for stream_id in stream_ids]
    reading = [asyncio.create_task(b.run()) for b in browsers]
    published: list[float] = []
    publisher = threading.Thread(
        target=_publish, args=(redis_url, stream_ids, scale, published), daemon=True
    )
    publisher.start()

    restart_times = []
    for restart in range(RESTARTS):  # spread over the publishing, one process after the other
        due = started + scale.publish_for * (restart + 1) / (RESTARTS + 1)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        server = servers[restart % 2]
        begun = time.monotonic()
        server.process_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 10)
        server.start()
        restart_times.append(time.monotonic() - begun)
    await asyncio.to_thread(publisher.join, scale.publish_for * 3)
    assert published, "the publisher did not finish"
    await asyncio.wait_for(asyncio.gather(*reading), 60)

    elapsed = time.monotonic() - started
    connections = sum(b.connections for b in browsers)
    cuts = sum(b.cut for b in browsers)
    waits = [w for b in browsers for w in b.waited]
    failed = sum(b.failed_connections for b in browsers)
    errors = collections.Counter(e for b in browsers for e in b.errors)
    print(
        f"rolling deploy: {scale.streams} streams x {scale.events} events, {RESTARTS} restarts "
        f"(each {min(restart_times):.1f}-{max(restart_times):.1f}s), publishing "
        f"{published[0]:.1f}s, {connections} responses + {failed} failed connections, "
        f"reconnection waits {min(waits):.2f}-{max(waits):.2f}s, {cuts} unclean ends, "
        f"error events {dict(errors)}, {elapsed:.1f}s in all"
    )
    for browser in browsers:
        assert browser.refused == [], browser.stream_id
        assert browser.seqs == list(range(1, scale.events + 2)), browser.stream_id
        assert browser.cut == 0
    assert all(b.connections > 1 for b in browsers)  # every one was moved by a restart
    # Each reconnection after a response waited the retry: that response sent (the default
    # only applies to a first connection that failed).
    assert sum(b.without_retry for b in browsers) == 0


@pytest.mark.timeout(400)
async def test_a_rolling_deploy_loses_and_repeats_nothing(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    scale = SMALL if os.environ.get("ROLLING_DEPLOY_SCALE") == "small" else FULL
    await _rolling_deploy(uvicorn_process, redis_url, scale)
