"""Direct streaming end to end on Redis: several uvicorn processes, crashes, a lost Redis.

Processes run ``uvicorn tests.apps.chat:app`` with ``STREAMING_MODE=redis`` so they fail
loudly instead of falling back to memory; they share the session redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import pytest

from tests.test_direct_streaming import (
    admitted_within,
    lease_state,
    new_user,
    open_stream,
    refused,
    settled,
    start_chat,
    try_stream,
)

if TYPE_CHECKING:
    from tests.helpers.redis_server import RedisServer
    from tests.helpers.uvicorn_server import (
        StartUvicornProcess,
        StartUvicornThread,
        UvicornProcess,
    )

pytestmark = pytest.mark.redis


async def start_processes(
    uvicorn_process: StartUvicornProcess, redis_url: str, *, limit: int, ttl: float
) -> tuple[UvicornProcess, UvicornProcess]:
    env = {
        "REDIS_URL": redis_url,
        "STREAMING_MODE": "redis",
        "LEASE_LIMIT": str(limit),
        "LEASE_TTL": str(ttl),
    }
    first, second = await asyncio.gather(
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
    )
    return first, second


async def test_two_processes_share_one_limit(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    a, b = await start_processes(uvicorn_process, redis_url, limit=2, ttl=5.0)
    user = new_user()
    async with AsyncExitStack() as stack:
        on_a = await open_stream(stack, a.base_url, user)
        await open_stream(stack, b.base_url, user)
        assert await refused(a.base_url, user)
        assert await refused(b.base_url, user)
        state_a, state_b = await asyncio.gather(
            lease_state(a.base_url, user), lease_state(b.base_url, user)
        )
        assert state_a == state_b == (2, 1)  # one limit, one stream in each process

        on_a.abort()
        await admitted_within(stack, b.base_url, user, timeout=3.0)
        assert await lease_state(b.base_url, user) == (2, 2)
        assert await lease_state(a.base_url, user) == (2, 0)
        assert await refused(a.base_url, user)
    await settled(a.base_url, user)
    await settled(b.base_url, user)


async def test_killed_process_lease_expires_after_ttl(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    ttl = 2.0
    a, b = await start_processes(uvicorn_process, redis_url, limit=1, ttl=ttl)
    user = new_user()
    async with AsyncExitStack() as stack:
        await open_stream(stack, a.base_url, user)
        assert await lease_state(b.base_url, user) == (1, 0)
        assert await refused(b.base_url, user)

        assert await asyncio.to_thread(a.kill) == -signal.SIGKILL
        assert await refused(b.base_url, user), "the dead process's lease vanished at once"
        assert await lease_state(b.base_url, user) == (1, 0)
        await admitted_within(stack, b.base_url, user, timeout=ttl + 3.0)
        assert await lease_state(b.base_url, user) == (1, 1)
    await settled(b.base_url, user)


async def test_redis_killed_mid_stream_nothing_hangs_nothing_leaks(
    uvicorn_thread: StartUvicornThread,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("STREAMING_MODE", raising=False)  # default: auto, lease policy fallback
    caplog.set_level(logging.WARNING, logger="streaming_mw")
    if not redis_server.is_running():
        redis_server.start()
    base_url, container = start_chat(uvicorn_thread, redis_server.url, limit=2, ttl=2.0)
    assert container.runtime().backend == "redis"
    user, other = new_user(), new_user()
    try:
        async with AsyncExitStack() as stack:
            first = await open_stream(stack, base_url, user, delay=0.1)
            second = await open_stream(stack, base_url, user, delay=0.1)
            assert await refused(base_url, user)

            redis_server.kill()

            for client in (first, second):  # open streams keep streaming
                for _ in range(3):
                    assert (await client.next_event(timeout=5.0)).event == "token"
            async with asyncio.timeout(10.0):  # new requests are answered, by the fallback
                third = await try_stream(stack, base_url, user, delay=0.1)
                assert third is not None, "refused although only the fallback limiter counts"
                assert (await third.next_event()).event == "token"
                assert await open_stream(stack, base_url, other) is not None
                assert await lease_state(base_url, user) == (1, 3)
                assert await lease_state(base_url, other) == (1, 1)
            outage = [r for r in caplog.records if "Redis unavailable for leases" in r.getMessage()]
            assert len(outage) == 1
            for client in (first, second, third):
                assert (await client.next_event(timeout=5.0)).event == "token"
            first.abort()
            third.abort()
        await settled(base_url, user)
        await settled(base_url, other)
        assert container.stream_registry().count() == 0
        fallback = container.memory_lease_limiter()
        assert (await fallback.active(user), await fallback.active(other)) == (0, 0)
    finally:
        if not redis_server.is_running():
            redis_server.start()  # empty: what Redis-held leases were lost with it
    await settled(base_url, user)
    await settled(base_url, other)
    async with AsyncExitStack() as stack:  # the limit works again after the outage
        await open_stream(stack, base_url, user)
        await open_stream(stack, base_url, user)
        assert await refused(base_url, user)
    await settled(base_url, user)
