"""Limits for operators (issue 16), end to end over real servers: the global limit's ``429``,
waiting for a slot, and the waiters' order and disconnects.

Memory-mode apps run in a uvicorn thread; Redis-mode ones as two uvicorn processes on the
session redis-server (``STREAMING_MODE=redis``: no silent fallback).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

import pytest

from streaming_mw import StreamLeaseConfig, StreamLimitExceeded
from streaming_mw.channels.fanout import RedisFanout
from streaming_mw.errors import ConfigurationError
from streaming_mw.leases import MemoryLeaseLimiter, RedisLeaseLimiter
from streaming_mw.runtime import StreamingContainer, init_lease_limiter, init_telemetry
from streaming_mw.runtime.waiting import LeaseWaiters
from tests.apps.chat import build_app
from tests.apps.otel_capture import Capture
from tests.helpers.redis_clients import fresh_client
from tests.helpers.sse_client import SSEClient
from tests.test_direct_streaming import (
    eventually,
    lease_state,
    new_user,
    open_stream,
    settled,
    stream_path,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis.asyncio

    from streaming_mw.leases import Lease
    from streaming_mw.runtime.lease_events import LeaseEvent
    from streaming_mw.sse import SSEEvent
    from tests.helpers.uvicorn_server import StartUvicornProcess, StartUvicornThread


@pytest.fixture
def otel() -> Iterator[Capture]:
    capture = Capture()
    yield capture
    capture.shutdown()


def start_memory_chat(
    uvicorn_thread: StartUvicornThread, **options: Any
) -> tuple[str, StreamingContainer]:
    container = StreamingContainer()
    app = build_app(container, **options)
    return uvicorn_thread(app).base_url, container


async def timed_request(base_url: str, path: str, stack: AsyncExitStack) -> tuple[float, int]:
    """(monotonic time the response head arrived, status); a 200 stream stays open on
    ``stack``."""
    client = await stack.enter_async_context(SSEClient.connect(base_url, path, timeout=10.0))
    return time.monotonic(), client.status


async def ended_at(client: SSEClient) -> float:
    """Read ``client``'s body to its end; the monotonic time it ended."""
    await client.read_body(timeout=10.0)
    return time.monotonic()


# --- the global limit ----------------------------------------------------------------------


@pytest.mark.redis
async def test_sixth_stream_of_three_users_on_two_processes_is_refused_globally(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "STREAMING_MODE": "redis",
        "LEASE_LIMIT": "3",
        "LEASE_GLOBAL_LIMIT": "5",
        "LEASE_TTL": "10",
    }
    a, b = await asyncio.gather(
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
    )
    alice, bob, carol = new_user(), new_user(), new_user()
    async with AsyncExitStack() as stack:
        for process, user in [(a, alice), (b, alice), (a, bob), (b, bob), (a, carol)]:
            await open_stream(stack, process.base_url, user)
        for process in (a, b):
            path = f"/chat/limited?user={carol}"
            async with SSEClient.connect(process.base_url, path) as refused:
                assert refused.status == 429
                body = await refused.read_json()
                assert (body["scope"], body["limit"]) == ("global", 5)
                assert 1 <= int(refused.headers["retry-after"]) <= 60
    for user in (alice, bob, carol):
        await settled(a.base_url, user)


# --- waiting for a slot --------------------------------------------------------------------


async def test_a_waiting_stream_starts_promptly_when_a_slot_frees(
    uvicorn_thread: StartUvicornThread,
) -> None:
    base_url, _ = start_memory_chat(uvicorn_thread, limit=3, ttl=30.0)
    user = new_user()
    async with AsyncExitStack() as stack:
        first = await open_stream(stack, base_url, user, count=11, delay=0.05)  # ends in 0.5 s
        for _ in range(2):
            await open_stream(stack, base_url, user)
        ended, (started, status) = await asyncio.gather(
            ended_at(first), timed_request(base_url, stream_path(user) + "&wait=2", stack)
        )
        assert status == 200
        assert abs(started - ended) <= 0.1, f"started {started - ended:.3f}s after the end"
    await settled(base_url, user)


async def test_a_waiting_stream_is_refused_when_no_slot_frees_in_time(
    uvicorn_thread: StartUvicornThread,
) -> None:
    base_url, container = start_memory_chat(uvicorn_thread, limit=3, ttl=30.0)
    user = new_user()
    async with AsyncExitStack() as stack:
        for _ in range(3):
            await open_stream(stack, base_url, user)
        asked = time.monotonic()
        answered, status = await timed_request(base_url, stream_path(user) + "&wait=2", stack)
        assert status == 429
        assert 2.0 <= answered - asked < 4.0
        assert container.lease_waiters().waiting == 0
    await settled(base_url, user)


async def test_the_configured_wait_applies_and_waiters_are_served_in_order(
    uvicorn_thread: StartUvicornThread,
) -> None:
    base_url, container = start_memory_chat(uvicorn_thread, limit=1, ttl=30.0, wait=20.0)
    user = new_user()
    waiters: LeaseWaiters = container.lease_waiters()
    async with AsyncExitStack() as stack:
        holder = await open_stream(stack, base_url, user, count=11, delay=0.05)
        early = asyncio.ensure_future(timed_request(base_url, stream_path(user, count=5), stack))
        await wait_until(lambda: waiters.waiting == 1)
        late = asyncio.ensure_future(timed_request(base_url, stream_path(user, count=5), stack))
        await wait_until(lambda: waiters.waiting == 2)
        await ended_at(holder)
        early_at, early_status = await asyncio.wait_for(early, 5)
        assert early_status == 200
        assert not late.done(), "the later waiter overtook the earlier one"
        late_at, late_status = await asyncio.wait_for(late, 5)  # after early's 5 tokens
        assert (late_status, late_at > early_at) == (200, True)
    await settled(base_url, user)


async def test_a_waiter_whose_client_leaves_stops_waiting_at_once(
    uvicorn_thread: StartUvicornThread,
) -> None:
    base_url, container = start_memory_chat(uvicorn_thread, limit=1, ttl=30.0)
    user = new_user()
    waiters: LeaseWaiters = container.lease_waiters()
    async with AsyncExitStack() as stack:
        holder = await open_stream(stack, base_url, user)
        reader, writer = await asyncio.open_connection(*base_url.removeprefix("http://").split(":"))
        path = stream_path(user) + "&wait=30"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await wait_until(lambda: waiters.waiting == 1)
        writer.close()
        await writer.wait_closed()
        await wait_until(lambda: waiters.waiting == 0, timeout=1.0)
        holder.abort()
        await settled(base_url, user)  # the departed waiter took no slot
        reader.feed_eof()


@pytest.mark.redis
async def test_a_release_in_one_process_wakes_a_waiter_in_another(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    env = {"REDIS_URL": redis_url, "STREAMING_MODE": "redis", "LEASE_LIMIT": "3"}
    a, b = await asyncio.gather(
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
    )
    user = new_user()
    async with AsyncExitStack() as stack:
        # B's first stream response pays one-time costs (tens of ms); serve one before.
        await open_stream(stack, b.base_url, new_user(), count=2)
        first = await open_stream(stack, a.base_url, user, count=11, delay=0.05)
        for _ in range(2):
            await open_stream(stack, a.base_url, user)
        ended, (started, status) = await asyncio.gather(
            ended_at(first), timed_request(b.base_url, stream_path(user) + "&wait=2", stack)
        )
        assert status == 200
        assert abs(started - ended) <= 0.1, f"started {started - ended:.3f}s after the end"
        asked = time.monotonic()
        answered, refused = await timed_request(b.base_url, stream_path(user) + "&wait=2", stack)
        assert (refused, 2.0 <= answered - asked < 4.0) == (429, True)
    await settled(a.base_url, user)
    await settled(b.base_url, user)


async def test_waiters_wake_in_order_without_polling() -> None:
    """At the memory limiter level: a release wakes the oldest waiter first; with nothing
    released, no retry happens before the refused lease's retry_after."""
    limiter = MemoryLeaseLimiter(StreamLeaseConfig(limit=1, ttl_seconds=30))
    waiters = LeaseWaiters()
    held = await limiter.acquire("u")
    tries: list[str] = []

    def attempt(name: str) -> Any:
        async def take() -> Any:
            tries.append(name)
            return await limiter.acquire("u")

        return take

    first = asyncio.ensure_future(waiters.acquire(attempt("first"), wait=5, limiter=limiter))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(waiters.acquire(attempt("second"), wait=5, limiter=limiter))
    await asyncio.sleep(0.3)
    assert tries == ["first", "second"]  # one try each, then they sleep until woken
    await held.release()
    lease = await asyncio.wait_for(first, 1)
    assert not second.done()
    await lease.release()
    await (await asyncio.wait_for(second, 1)).release()
    blocker = await limiter.acquire("u")
    with pytest.raises(StreamLimitExceeded):
        await waiters.acquire(attempt("third"), wait=0.2, limiter=limiter)
    await blocker.release()
    assert waiters.waiting == 0


async def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


# --- lost leases ---------------------------------------------------------------------------


async def next_non_token(client: SSEClient, timeout: float) -> SSEEvent:
    """The first event that is not a ``token`` (tokens arrive every 50 ms meanwhile)."""
    async with asyncio.timeout(timeout):
        while (event := await client.next_event(timeout=timeout)).event == "token":
            pass
    return event


@pytest.mark.redis
@pytest.mark.parametrize("policy", ["end", "continue"])
async def test_flushall_under_20_live_streams(
    uvicorn_thread: StartUvicornThread,
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    otel: Capture,
    policy: Literal["end", "continue"],
) -> None:
    ttl = 3.0  # refreshed every 1 s
    container = StreamingContainer()
    app = build_app(container, limit=20, ttl=ttl, redis_url=redis_url, on_lease_lost=policy)
    init_telemetry(otel.tracer_provider, otel.meter_provider, container=container)
    told: list[LeaseEvent] = []
    init_lease_limiter(None, on_event=told.append, container=container)
    base_url = uvicorn_thread(app).base_url
    users = [new_user() for _ in range(4)]
    async with AsyncExitStack() as stack:
        clients = [await open_stream(stack, base_url, users[n % 4]) for n in range(20)]
        assert container.runtime().backend == "redis"
        await redis_client.flushall()
        flushed = time.monotonic()
        if policy == "end":
            for client in clients:
                event = await next_non_token(client, timeout=ttl)
                assert (event.event, json.loads(event.data)["reason"]) == ("error", "lease_lost")
                with pytest.raises(EOFError):
                    await client.next_event(timeout=1.0)
            assert time.monotonic() - flushed <= ttl / 3 + 0.5
        else:
            await asyncio.sleep(ttl / 3 + 0.5)  # every lease has been refreshed (and lost)
            for client in clients:  # and every stream goes on
                for _ in range(3):
                    assert (await client.next_event()).event == "token"
        assert container.lease_keeper().lost == 20
        assert otel.total("streaming_mw.leases.lost") == 20
        assert sum(event.kind == "lost" for event in told) == 20
    for user in users:
        await settled(base_url, user)


# --- crash recovery with the defaults ------------------------------------------------------


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_sigkill_of_a_process_holding_3_leases_frees_them_within_60s(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    env = {"REDIS_URL": redis_url, "STREAMING_MODE": "redis", "LEASE_LIMIT": "3"}
    env["LEASE_TTL"] = "default"  # StreamLeaseConfig's own TTL
    a, b = await asyncio.gather(
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
        asyncio.to_thread(uvicorn_process, "tests.apps.chat:app", env),
    )
    user = new_user()
    async with AsyncExitStack() as stack:
        for _ in range(3):
            await open_stream(stack, a.base_url, user)
        assert await lease_state(b.base_url, user) == (3, 0)
        assert await asyncio.to_thread(a.kill) == -signal.SIGKILL
        killed = time.monotonic()
        await eventually(
            lambda: lease_free(b.base_url, user), 60.0, "the dead process's slots came back"
        )
        assert time.monotonic() - killed <= 60.0
        for _ in range(3):
            await open_stream(stack, b.base_url, user)
    await settled(b.base_url, user)


async def lease_free(base_url: str, user: str) -> bool:
    active, _ = await lease_state(base_url, user)
    return active == 0


# --- callbacks -----------------------------------------------------------------------------


async def test_the_event_callback_hears_acquired_rejected_released(
    uvicorn_thread: StartUvicornThread, otel: Capture
) -> None:
    container = StreamingContainer()
    app = build_app(container, limit=1, ttl=30.0, global_limit=2)
    told: list[LeaseEvent] = []

    def on_event(event: LeaseEvent) -> None:
        told.append(event)
        raise RuntimeError("a broken callback does not disturb the lease")

    init_lease_limiter(None, on_event=on_event, container=container)
    init_telemetry(otel.tracer_provider, otel.meter_provider, container=container)
    base_url = uvicorn_thread(app).base_url
    alice, bob, carol = new_user(), new_user(), new_user()
    async with AsyncExitStack() as stack:
        await open_stream(stack, base_url, alice)
        await open_stream(stack, base_url, bob)
        for user in (alice, carol):  # alice at her limit, carol at the global one
            async with SSEClient.connect(base_url, stream_path(user)) as refused:
                assert refused.status == 429
    await wait_until(lambda: sum(event.kind == "released" for event in told) == 2)
    kinds = [(event.kind, event.user_id, event.scope) for event in told]
    assert kinds[:4] == [
        ("acquired", alice, None),
        ("acquired", bob, None),
        ("rejected", alice, "user"),
        ("rejected", carol, "global"),
    ]
    released = {event.user_id: event.lease_id for event in told if event.kind == "released"}
    assert (len(kinds), set(released)) == (6, {alice, bob})
    assert told[0].lease_id is not None
    assert told[0].lease_id == released[alice]
    points = otel.points("streaming_mw.leases.rejected")
    by_scope = {point.attributes["streaming_mw.lease.scope"]: point.value for point in points}
    assert by_scope == {"user": 1, "global": 1}
    assert otel.total("streaming_mw.leases.acquired") == 2
    assert otel.total("streaming_mw.leases.released") == 2


# --- waking on Redis and Redis Cluster, per scope --------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["redis", "cluster"])
@pytest.mark.parametrize("scope", ["user", "global"])
async def test_a_release_notice_wakes_the_waiter_of_its_scope(
    request: pytest.FixtureRequest, kind: Literal["redis", "cluster"], scope: str
) -> None:
    client = await fresh_client(request, kind)
    fanout = RedisFanout(client, queue_size=16, ping_interval=15.0, poll_timeout=1.0)
    await fanout.start()
    config = StreamLeaseConfig(limit=1, global_limit=1 if scope == "global" else None)
    limiter = RedisLeaseLimiter(client, config)
    waiters = LeaseWaiters()
    carol_tries = 0

    async def carol() -> Lease:
        nonlocal carol_tries
        carol_tries += 1
        return await limiter.acquire("carol")

    try:
        held = await limiter.acquire("alice")
        waiter = "bob" if scope == "global" else "alice"
        waiting = asyncio.ensure_future(
            waiters.acquire(
                lambda: limiter.acquire(waiter), wait=5, limiter=limiter, subscribe=fanout.subscribe
            )
        )
        if scope == "user":  # a bystander: carol waits for her own slot, not alice's
            await limiter.acquire("carol")
            bystander = asyncio.ensure_future(
                waiters.acquire(carol, wait=5, limiter=limiter, subscribe=fanout.subscribe)
            )
        await asyncio.sleep(0.3)  # subscribed, refused again, now waiting
        assert not waiting.done()
        await held.release()
        released = time.monotonic()
        lease = await asyncio.wait_for(waiting, 1.0)
        # Woken by the notice, not by a timer (retry_after is 30 s). On a cluster the process's
        # reader polls each master's shard connection in turn, up to 0.2 s each.
        bound = 0.1 if kind == "redis" else 0.1 + 2 * 0.2
        assert time.monotonic() - released <= bound
        assert lease.user_id == waiter
        await lease.release()
        if scope == "user":
            await asyncio.sleep(0.1)
            assert carol_tries == 2  # the first try, and the one after subscribing: no more
            bystander.cancel()
            await asyncio.wait({bystander})
    finally:
        await fanout.aclose()
        await client.aclose()


async def test_a_negative_wait_is_a_configuration_error(
    uvicorn_thread: StartUvicornThread,
) -> None:
    base_url, _ = start_memory_chat(uvicorn_thread, limit=1, ttl=30.0)
    with pytest.raises(ConfigurationError):
        StreamLeaseConfig(wait_seconds=-1)
    async with SSEClient.connect(base_url, stream_path(new_user()) + "&wait=-1") as answer:
        assert answer.status == 500  # the route passed a bad value: a server error, not a 429
