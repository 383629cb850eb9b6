"""Direct streaming end to end: the seed's ``stream_lease`` snippet behind a real uvicorn.

Each scenario runs against `tests.apps.chat` in a uvicorn thread, once on the in-memory
limiter and once on the real redis-server. The client is a raw socket (`SSEClient`), so a
client can vanish mid-stream exactly like a browser tab closing. Lease counts are read over
HTTP (``/leases/{user}``), on the server's own event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from streaming_mw.runtime import StreamingContainer
from tests.apps.chat import build_app
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import pytest

    from tests.helpers.uvicorn_server import StartUvicornThread

LIMIT_BODY = {"detail": "Too many concurrent streams"}


# --- helpers (also used by test_direct_streaming_redis) ---------------------------------


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def stream_path(user: str, *, count: int = 10_000, delay: float = 0.05) -> str:
    return f"/chat/stream?user={user}&count={count}&delay={delay}"


async def get_json(base_url: str, path: str) -> Any:
    async with SSEClient.connect(base_url, path) as client:
        assert client.status == 200, f"GET {path} answered {client.status}"
        return await client.read_json()


async def lease_state(base_url: str, user: str) -> tuple[int, int]:
    """``(leases the limiter counts for user, open streams of user in that process)``."""
    data = await get_json(base_url, f"/leases/{user}")
    return int(data["active"]), int(data["streams"])


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def settled(base_url: str, user: str, timeout: float = 5.0) -> None:
    """Wait until ``user`` holds no lease and has no open stream."""

    async def free() -> bool:
        return await lease_state(base_url, user) == (0, 0)

    await eventually(free, timeout, f"{user} holds no lease and no stream")


async def try_stream(
    stack: AsyncExitStack, base_url: str, user: str, **query: Any
) -> SSEClient | None:
    """Request a stream: the open client (kept on ``stack``) if admitted, None if refused
    with the seed's 429 (that client is closed at once)."""
    inner = AsyncExitStack()
    client = await inner.enter_async_context(
        SSEClient.connect(base_url, stream_path(user, **query))
    )
    if client.status == 200:
        stack.push_async_callback(inner.aclose)
        return client
    async with inner:
        assert client.status == 429, f"stream request answered {client.status}"
        assert await client.read_json() == LIMIT_BODY
    return None


async def open_stream(stack: AsyncExitStack, base_url: str, user: str, **query: Any) -> SSEClient:
    """A stream that must be admitted; its first event has arrived."""
    client = await try_stream(stack, base_url, user, **query)
    assert client is not None, f"stream of {user} refused"
    assert client.headers["content-type"].startswith("text/event-stream")
    event = await client.next_event()
    assert event.event == "token"
    return client


async def refused(base_url: str, user: str) -> bool:
    async with AsyncExitStack() as stack:
        return await try_stream(stack, base_url, user) is None


async def admitted_within(
    stack: AsyncExitStack, base_url: str, user: str, timeout: float
) -> SSEClient:
    """Retry a stream request until it is admitted; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (client := await try_stream(stack, base_url, user)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no stream of {user} admitted within {timeout}s")
        await asyncio.sleep(0.02)
    event = await client.next_event()
    assert event.event == "token"
    return client


def start_chat(
    uvicorn_thread: StartUvicornThread, redis_url: str | None, *, limit: int, ttl: float
) -> tuple[str, StreamingContainer]:
    container = StreamingContainer()
    app = build_app(container, limit=limit, ttl=ttl, redis_url=redis_url)
    return uvicorn_thread(app).base_url, container


# --- scenarios --------------------------------------------------------------------------


async def check_limit_and_release(base_url: str, user: str) -> None:
    """Scenario 1 with limit 2: 2 streams, a 429, an abort frees a slot, all gone -> 0."""
    async with AsyncExitStack() as stack:
        first = await open_stream(stack, base_url, user)
        second = await open_stream(stack, base_url, user)
        assert await try_stream(stack, base_url, user) is None
        assert await lease_state(base_url, user) == (2, 2)

        first.abort()
        third = await admitted_within(stack, base_url, user, timeout=1.0)
        assert await try_stream(stack, base_url, user) is None
        assert (await second.next_event()).event == "token"
        assert (await third.next_event()).event == "token"
        assert await lease_state(base_url, user) == (2, 2)
    await settled(base_url, user)


async def test_limit_429_and_abort_frees_the_slot(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    base_url, container = start_chat(uvicorn_thread, backend, limit=2, ttl=2.0)
    await check_limit_and_release(base_url, new_user())
    assert container.stream_registry().count() == 0


async def test_memory_fallback_warns_once(
    uvicorn_thread: StartUvicornThread, clean_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streaming_mw")

    def fallback_warnings() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.name.startswith("streaming_mw")
            and record.getMessage().startswith("STREAMING FALLBACK")
        ]

    base_url, _ = start_chat(uvicorn_thread, None, limit=2, ttl=2.0)
    [warning] = fallback_warnings()
    assert warning.name == "streaming_mw"
    assert warning.levelno == logging.WARNING
    assert "REDIS_URL is not set" in warning.getMessage()

    await check_limit_and_release(base_url, new_user())
    assert fallback_warnings() == [warning]


async def test_stream_longer_than_ttl_keeps_its_lease(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    ttl, count, delay = 1.0, 36, 0.1  # ~3.5 s of stream: 3.5 x the TTL
    base_url, _ = start_chat(uvicorn_thread, backend, limit=1, ttl=ttl)
    user = new_user()
    async with AsyncExitStack() as stack:
        client = await try_stream(stack, base_url, user, count=count, delay=delay)
        assert client is not None

        async def read_all() -> list[str]:
            return [event.data async for event in client.events(timeout=5.0)]

        reader = asyncio.create_task(read_all())
        probes = 0
        while not reader.done():
            assert await refused(base_url, user), f"second stream admitted after {probes} probes"
            assert await lease_state(base_url, user) == (1, 1)
            probes += 1
            await asyncio.wait({reader}, timeout=0.5)
        received = await reader
    assert len(received) == count
    assert probes >= 5
    async with AsyncExitStack() as stack:
        await admitted_within(stack, base_url, user, timeout=3.0)
    await settled(base_url, user)


async def test_200_streams_dropped_in_random_order_leave_no_lease(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    per_user, users = 5, [new_user() for _ in range(40)]
    base_url, container = start_chat(uvicorn_thread, backend, limit=per_user, ttl=5.0)
    async with AsyncExitStack() as stack:
        clients = await asyncio.gather(
            *(
                stack.enter_async_context(SSEClient.connect(base_url, stream_path(u, delay=0.2)))
                for u in users
                for _ in range(per_user)
            )
        )
        assert [c.status for c in clients] == [200] * len(clients)
        events = await asyncio.gather(*(c.next_event(timeout=10.0) for c in clients))
        assert {e.event for e in events} == {"token"}
        states = await asyncio.gather(*(lease_state(base_url, u) for u in users))
        assert set(states) == {(per_user, per_user)}
        assert container.stream_registry().count() == len(clients) == 200

        random.shuffle(clients)
        for index, client in enumerate(clients):
            client.abort()
            if index % 7 == 0:
                await asyncio.sleep(0)

        async def all_free() -> bool:
            states = await asyncio.gather(*(lease_state(base_url, u) for u in users))
            return set(states) == {(0, 0)}

        await eventually(all_free, 5.0, "every user holds no lease and no stream")
    assert container.stream_registry().count() == 0
