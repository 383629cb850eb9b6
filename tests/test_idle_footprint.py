"""What an idle follower keeps alive, checked by structure (the bytes are
`bench.follower_heap`'s to measure): under the middleware, one coroutine for the middleware and
one for the response, no task beside the request's own (the disconnect watch steps the server's
``receive`` by hand), no coroutine of the follower or its subscription, and no instance dict of
its own past Starlette's few attributes. Each guard fails if a change brings one back.

Also: the disconnect is still seen under ASGI 2.3 when the server's ``receive`` cannot run
outside a task (read in a task instead), and the waits `Follower.idle_wait` hands out end as
`Follower.next`'s did: at their time, on an interrupt, or going on after a notice already had.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import types
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import streaming_mw
from streaming_mw import SSEEmitter
from streaming_mw.channels.base import Notice
from streaming_mw.web.routes import FollowResponse
from tests.apps.deploy import build_app
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.leases import eventually
from tests.test_live_writes import memory_stream
from tests.test_sse_response import SPECS, data, memory_container

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from streaming_mw.channels import Follower
    from tests.helpers.asgi import SpecVersion

PACKAGE = str(Path(streaming_mw.__file__).parent)
FOLLOWERS = 3


def our_coroutines() -> Counter[str]:
    """The library's coroutines waiting now (not the ended ones), by function."""
    gc.collect()
    return Counter(
        obj.cr_code.co_qualname
        for obj in gc.get_objects()
        if isinstance(obj, types.CoroutineType)
        and obj.cr_frame is not None
        and obj.cr_code.co_filename.startswith(PACKAGE)
    )


async def settle() -> None:
    for _ in range(5):  # the watch's first reads run in loop callbacks
        await asyncio.sleep(0)


@SPECS
async def test_an_idle_follower_keeps_two_coroutines_no_task_and_no_dict_of_its_own(
    spec: SpecVersion,
) -> None:
    container = memory_container(ping_interval=30, max_idle_time=60, retry_ms=None)
    app = build_app(container)
    async with lifespan(app):
        emitter = SSEEmitter(container.stream_channel())
        await emitter.open()
        await emitter.log("before")
        client = AsgiClient(app, spec_version=spec)
        path = f"/streams/{emitter.stream_id}"
        warm_up = SSEEmitter(container.stream_channel())  # starts what serves every stream
        await warm_up.open()
        async with client.stream("GET", f"/streams/{warm_up.stream_id}") as r:
            await warm_up.complete()  # it ends on its own (2.4: a disconnect waits for a write)
            await r.read_all()
        registry = container.stream_registry()

        async def released() -> bool:
            return registry.count() == 0

        await eventually(released)  # its request ended: its disconnect pump (2.4) is cancelled
        await settle()
        coroutines, tasks = our_coroutines(), len(asyncio.all_tasks())
        async with contextlib.AsyncExitStack() as stack:
            readers = [
                await stack.enter_async_context(client.stream("GET", path))
                for _ in range(FOLLOWERS)
            ]
            for r in readers:
                assert data(await r.read_event())["message"] == "before"
            await emitter.log("live")  # delivered from the fan-out, the relays stay asleep
            for r in readers:
                assert data(await r.read_event())["message"] == "live"
            await settle()
            grown = our_coroutines() - coroutines
            each = {"StreamingMiddleware.__call__": 1, "EventStreamResponse.__call__": 1}
            if spec == "2.4":  # the middleware's pump reads `receive`: the response does not
                each["pump_receive"] = 1
            assert grown == Counter({name: n * FOLLOWERS for name, n in each.items()})
            # 2.3: the requests' own (the harness runs each app call in one), no watcher's.
            per_follower = 1 if spec == "2.3" else 2
            assert len(asyncio.all_tasks()) - tasks == per_follower * FOLLOWERS
            gc.collect()  # the ended ones
            responses = [obj for obj in gc.get_objects() if isinstance(obj, FollowResponse)]
            assert len(responses) == FOLLOWERS
            for response in responses:
                assert set(vars(response)) <= {"status_code", "background", "raw_headers"}
            first, second = responses[0].raw_headers, responses[1].raw_headers
            pairs = zip(first, second, strict=True)
            shared = [(a, b) for a, b in pairs if a[0] != b"x-stream-id"]
            assert shared
            assert all(a is b for a, b in shared)
            await emitter.complete()
            for r in readers:
                await r.read_all()
        await eventually(released)


def task_bound(app: ASGIApp) -> ASGIApp:
    """``app`` behind a server whose ``receive`` fails outside a task (an anyio-based one)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def needs_a_task() -> Message:
            if asyncio.current_task() is None:
                raise RuntimeError("this receive must run in a task")
            return await receive()

        await app(scope, needs_a_task, send)

    return wrapped


async def test_a_receive_that_needs_a_task_is_read_in_one_and_the_disconnect_is_seen() -> None:
    container = memory_container(ping_interval=30, max_idle_time=60, retry_ms=None)
    app = build_app(container)
    registry = container.stream_registry()

    async def released() -> bool:
        return registry.count() == 0

    async with lifespan(app):
        emitter = SSEEmitter(container.stream_channel())
        await emitter.open()
        path = f"/streams/{emitter.stream_id}"
        async with AsgiClient(task_bound(app), spec_version="2.3").stream("GET", path) as r:
            await emitter.log("one")
            assert data(await r.read_event())["message"] == "one"
            tasks = {task.get_coro().__qualname__ for task in asyncio.all_tasks()}  # type: ignore[union-attr]
            assert any(name.endswith("needs_a_task") for name in tasks)  # the fallback's task
            (active,) = registry.streams()
            r.disconnect()
            await r.wait_finished(timeout=2)
            assert r.finished
            assert not r.cancelled
        await eventually(released)
    assert active.path == path


# --- the waits `Follower.idle_wait` hands out ---------------------------------------------


async def caught_up_follower() -> tuple[SSEEmitter, Follower]:
    _, channel, emitter = await memory_stream()
    return emitter, await channel.follow(emitter.stream_id)


@pytest.mark.parametrize("end", ["time", "interrupt"])
async def test_an_idle_wait_that_ends_without_a_notice_leaves_nothing_to_wait(end: str) -> None:
    _, follower = await caught_up_follower()
    waiter = follower.idle_wait(0.01 if end == "time" else 30.0)
    assert waiter is not None
    if end == "interrupt":
        follower.interrupt()
    await asyncio.wait_for(waiter, 5)
    assert follower.end_wait() == 0.0
    assert await follower.next(0.0) is None


async def test_an_idle_wait_woken_by_a_notice_already_had_goes_on_for_the_time_left() -> None:
    emitter, follower = await caught_up_follower()
    await emitter.log("one")
    assert (await follower.next(5)) is not None  # the follower has event 1
    waiter = follower.idle_wait(30.0)
    assert waiter is not None
    assert emitter.epoch is not None
    follower._subscription.deliver(Notice(emitter.epoch, 1, b"{}"))  # type: ignore[attr-defined]
    await asyncio.wait_for(waiter, 5)
    left = follower.end_wait()
    assert left is not None
    assert 0 < left <= 30.0
    await emitter.log("two")
    event = await asyncio.wait_for(follower.next(left), 5)
    assert event is not None
    assert isinstance(event.data, dict)
    assert event.data["message"] == "two"


async def test_a_follower_with_work_to_do_hands_out_no_idle_wait() -> None:
    _, channel, emitter = await memory_stream()
    follower = await channel.follow(emitter.stream_id)
    await emitter.log("one")
    await asyncio.sleep(0)
    assert follower.idle_wait(30.0) is None  # a notice is queued: `next` takes it at once
    assert (await follower.next(0.0)) is not None
    reset = await channel.follow(emitter.stream_id, "not-a-cursor")
    assert reset.idle_wait(30.0) is None  # a `reset` is pending
    with pytest.raises(RuntimeError):
        reset.place(None)  # placed once, when followed
