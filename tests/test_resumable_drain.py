"""The shutdown drain of resumable streams, against real uvicorn processes and Redis.

On SIGTERM, the client of a resumable stream on process A is sent away at once, after its
last whole event, with ``retry:``; it resumes on process B from its ``Last-Event-ID`` and gets
the rest exactly once while A's generation runs on. At A's drain deadline a generation still
running ends with ``error {reason: "shutdown"}`` in the history, so followers elsewhere end at
once instead of waiting for ``producer_lost``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import pytest

from tests.helpers.resumable import data, new_id, read_until_end, seq
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from streaming_mw.sse import SSEEvent
    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

CLEAN_EXIT = (0, -signal.SIGTERM)


async def start(
    uvicorn_process: StartUvicornProcess, redis_url: str, drain_timeout: float
) -> UvicornProcess:
    env = {
        "REDIS_URL": redis_url,
        "STREAMING_MODE": "redis",
        "STREAMING_DRAIN_TIMEOUT": str(drain_timeout),
    }
    return await asyncio.to_thread(uvicorn_process, "tests.apps.resumable:app", env)


async def until_eof(client: SSEClient, timeout: float = 20.0) -> list[SSEEvent]:
    """Every event until the server ends the body."""
    return [event async for event in client.events(timeout=timeout)]


async def sigterm_mid_stream(
    a: UvicornProcess, path: str, stream: str, tokens_before: int
) -> tuple[list[SSEEvent], int | None]:
    """Read ``tokens_before`` tokens from A, SIGTERM A, then read to the end of the body:
    every token event A sent, and its ``retry:`` hint."""
    async with SSEClient.connect(a.base_url, path) as client:
        assert client.status == 200
        assert data(await client.next_event()) == {"stream_id": stream}
        seen = [await client.next_event() for _ in range(tokens_before)]
        a.process_signal(signal.SIGTERM)
        seen += await until_eof(client)
        return seen, client.retry


async def test_sigterm_sends_the_client_to_another_process_without_gap_or_duplicate(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    a = await start(uvicorn_process, redis_url, drain_timeout=20.0)
    b = await start(uvicorn_process, redis_url, drain_timeout=20.0)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&count=150&delay=0.02&grace=0&stream={stream}"
    seen, retry = await sigterm_mid_stream(a, path, stream, 20)
    assert retry is not None  # sent elsewhere: a `retry:` hint, no terminal event
    assert all(e.event == "token" for e in seen)
    assert [seq(e) for e in seen] == list(range(1, len(seen) + 1))
    assert len(seen) < 150
    headers = {"Last-Event-ID": str(seen[-1].id)}
    async with SSEClient.connect(
        b.base_url, f"/streams/{stream}?user={user}", headers=headers
    ) as c:
        assert c.status == 200
        rest = await read_until_end(c.next_event, timeout=20.0)
    tokens = [data(e)["token"] for e in seen + rest[:-1]]
    assert tokens == [f"t{i}" for i in range(1, 151)]  # exactly once each, in order
    assert [seq(e) for e in rest] == list(range(len(seen) + 1, 152))
    assert (rest[-1].event, data(rest[-1])) == ("complete", {"success": True})
    assert await asyncio.to_thread(a.wait, 30) in CLEAN_EXIT  # once the generation ended


async def test_at_the_drain_deadline_followers_elsewhere_end_with_shutdown(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    a = await start(uvicorn_process, redis_url, drain_timeout=2.0)
    b = await start(uvicorn_process, redis_url, drain_timeout=2.0)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&count=100000&delay=0.01&grace=0&stream={stream}"
    seen, retry = await sigterm_mid_stream(a, path, stream, 5)
    assert retry is not None
    headers = {"Last-Event-ID": str(seen[-1].id)}
    async with SSEClient.connect(
        b.base_url, f"/streams/{stream}?user={user}", headers=headers
    ) as c:
        assert c.status == 200
        rest = await read_until_end(c.next_event, timeout=10.0)
    end = rest[-1]
    assert (end.event, data(end)["reason"]) == ("error", "shutdown")  # not producer_lost
    tokens = [data(e)["token"] for e in seen + rest[:-1]]
    assert tokens == [f"t{i}" for i in range(1, len(tokens) + 1)]
    assert len(rest) > 2  # generation went on after the client was sent away
    assert await asyncio.to_thread(a.wait, 30) in CLEAN_EXIT
