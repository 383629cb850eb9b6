"""Resumable streams across processes on Redis: resume on a second process, the stop button
from another process, and followers of a process that was killed with SIGKILL.

Processes run ``uvicorn tests.apps.resumable:app`` with ``STREAMING_MODE=redis`` (they fail
loudly instead of falling back to memory) and share the session redis-server.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.leases import eventually
from tests.helpers.resumable import data, new_id, read_until_end, seq
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

pytestmark = pytest.mark.redis


async def processes(
    uvicorn_process: StartUvicornProcess, redis_url: str, count: int = 2
) -> list[UvicornProcess]:
    env = {"REDIS_URL": redis_url, "STREAMING_MODE": "redis"}
    started = await asyncio.gather(
        *(asyncio.to_thread(uvicorn_process, "tests.apps.resumable:app", env) for _ in range(count))
    )
    return list(started)


async def get_json(base_url: str, path: str, method: str = "GET") -> tuple[int, Any]:
    async with SSEClient.connect(base_url, path, method=method) as client:
        return client.status, await client.read_json()


async def test_resume_on_a_second_process_gets_the_rest_exactly_once(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    a, b = await processes(uvicorn_process, redis_url)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=200&delay=0.02"
    async with SSEClient.connect(a.base_url, path) as client:
        assert client.status == 200
        assert client.headers["x-stream-id"] == stream
        assert data(await client.next_event()) == {"stream_id": stream}
        first = [await client.next_event() for _ in range(20)]
        client.abort()
    assert [data(e)["token"] for e in first] == [f"t{i}" for i in range(1, 21)]
    await asyncio.sleep(1.0)
    _, seen = await get_json(a.base_url, f"/observed/{stream}")
    assert seen["produced"] > 21  # generation went on while nobody was connected
    headers = {"Last-Event-ID": str(first[-1].id)}
    follow = f"/streams/{stream}?user={user}"
    async with SSEClient.connect(b.base_url, follow, headers=headers) as client:
        assert client.status == 200
        rest = await read_until_end(client.next_event)
    assert [data(e)["token"] for e in rest[:-1]] == [f"t{i}" for i in range(21, 201)]
    assert [seq(e) for e in rest] == list(range(21, 202))
    assert (rest[-1].event, data(rest[-1])) == ("complete", {"success": True})
    _, seen = await get_json(a.base_url, f"/observed/{stream}")
    assert seen == {"produced": 200, "closed": True, "how": "end"}
    _, leases = await get_json(b.base_url, f"/leases/{user}")
    assert leases["active"] == 0


async def test_cancel_from_another_process_closes_the_generator(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    a, b = await processes(uvicorn_process, redis_url)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=100000&delay=0.01"
    async with SSEClient.connect(a.base_url, path) as client:
        await client.next_event()
        await client.next_event()
        cancel = f"/streams/{stream}/cancel"
        assert await get_json(b.base_url, f"{cancel}?user=mallory", "POST") == (
            404,
            {"detail": f"no stream {stream!r}"},
        )
        assert await get_json(b.base_url, f"{cancel}?user={user}", "POST") == (
            200,
            {"cancelled": True},
        )
        events = await read_until_end(client.next_event)
    assert (events[-1].event, data(events[-1])) == (
        "complete",
        {"success": False, "cancelled": True, "reason": "cancelled"},
    )
    _, seen = await get_json(a.base_url, f"/observed/{stream}")
    assert seen["closed"] is True
    assert seen["how"] in ("GeneratorExit", "CancelledError")

    async def freed() -> bool:  # released right after the terminal event went out
        return int((await get_json(a.base_url, f"/leases/{user}"))[1]["active"]) == 0

    await eventually(freed)


async def test_client_that_never_returns_frees_generator_and_lease(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    (a,) = await processes(uvicorn_process, redis_url, 1)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=100000&delay=0.01&grace=1"
    async with SSEClient.connect(a.base_url, path) as client:
        await client.next_event()
        await client.next_event()
        client.abort()

    async def closed() -> bool:
        return bool((await get_json(a.base_url, f"/observed/{stream}"))[1]["closed"])

    async def freed() -> bool:
        return int((await get_json(a.base_url, f"/leases/{user}"))[1]["active"]) == 0

    await eventually(closed, timeout=15.0)
    await eventually(freed, timeout=15.0)
    _, seen = await get_json(a.base_url, f"/observed/{stream}")
    assert seen["how"] in ("GeneratorExit", "CancelledError")


async def test_followers_of_a_killed_process_end_with_producer_lost(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    a, b = await processes(uvicorn_process, redis_url)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=100000&delay=0.01"
    follow = f"/streams/{stream}?user={user}"
    async with SSEClient.connect(a.base_url, path) as first:
        await first.next_event()
        await first.next_event()
        async with SSEClient.connect(b.base_url, follow) as follower:
            await follower.next_event()
            await asyncio.to_thread(a.kill)
            async with asyncio.timeout(30):  # heartbeat TTL (5 s) + a check a second: no hang
                events = await read_until_end(follower.next_event, timeout=30)
            end = events[-1]
            assert (end.event, data(end)["reason"]) == ("error", "producer_lost")
            with pytest.raises(EOFError):
                await follower.next_event()
    async with SSEClient.connect(b.base_url, follow) as late:  # a later follower too
        events = await read_until_end(late.next_event)
    assert (events[-1].event, data(events[-1])["reason"]) == ("error", "producer_lost")


async def test_a_taken_stream_id_is_refused_on_any_process(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    a, b = await processes(uvicorn_process, redis_url)
    alice, stream = new_id("alice"), new_id("s")
    path = f"/chat?user={alice}&stream={stream}&count=100000&delay=0.01"
    async with SSEClient.connect(a.base_url, path) as first:
        await first.next_event()
        before = await first.next_event()
        for user in (alice, "mallory"):  # its owner or anyone else, on the other process
            again = f"/chat?user={user}&stream={stream}&count=3&delay=0"
            assert await get_json(b.base_url, again) == (
                409,
                {"detail": f"stream {stream!r} already exists"},
            )
        after = await first.next_event()
        assert seq(after) == seq(before) + 1  # the stream goes on, numbered as before
        await get_json(a.base_url, f"/streams/{stream}/cancel?user={alice}", "POST")
        events = await read_until_end(first.next_event)
    follow = f"/streams/{stream}?user={alice}"
    async with SSEClient.connect(b.base_url, follow) as replay:  # history: one producer's only
        history = await read_until_end(replay.next_event)
    assert [seq(e) for e in history] == list(range(1, len(history) + 1))
    assert history[-1].data == events[-1].data
    assert [data(e)["token"] for e in history[:-1]] == [f"t{i}" for i in range(1, len(history))]
    assert await get_json(b.base_url, f"/chat?user={alice}&stream={stream}&count=3") == (
        409,  # ended, too
        {"detail": f"stream {stream!r} already exists"},
    )
    _, leases = await get_json(b.base_url, "/leases/mallory")
    assert leases["active"] == 0
