"""The examples run: each is served by a real uvicorn server and read as a browser would."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import orjson

from examples.demo.app import LEASES_PER_USER
from examples.demo.app import app as demo_app
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from tests.helpers.uvicorn_server import StartUvicornThread


async def test_demo_page_is_an_eventsource_view(uvicorn_thread: StartUvicornThread) -> None:
    server = uvicorn_thread(demo_app)
    async with SSEClient.connect(server.base_url, "/") as client:
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/html")
        page = (await client.read_body()).decode()
    assert "new EventSource(" in page
    assert "/chat/stream" in page


async def test_demo_chat_holds_a_lease_per_stream_and_refuses_past_the_limit(
    uvicorn_thread: StartUvicornThread,
) -> None:
    server = uvicorn_thread(demo_app)
    path = "/chat/stream?prompt=x&delay=0.5&user=limit-test"
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(LEASES_PER_USER):
            client = await stack.enter_async_context(SSEClient.connect(server.base_url, path))
            assert client.status == 200
            await client.next_event()
        async with SSEClient.connect(server.base_url, "/streams") as info:
            assert (await info.read_json())["by_user"] == {"limit-test": LEASES_PER_USER}
        async with SSEClient.connect(server.base_url, path) as refused:
            assert refused.status == 429
            assert refused.headers["retry-after"].isdigit()


async def test_demo_chat_streams_tokens_then_completes(uvicorn_thread: StartUvicornThread) -> None:
    server = uvicorn_thread(demo_app)
    path = "/chat/stream?prompt=hello&delay=0"
    async with SSEClient.connect(server.base_url, path) as client:
        assert client.status == 200
        assert client.headers["content-type"] == "text/event-stream"
        assert client.headers["cache-control"] == "no-store"
        assert client.headers["x-accel-buffering"] == "no"
        events = [event async for event in client.events(timeout=5.0)]
    tokens = [orjson.loads(e.data)["token"] for e in events if e.event == "token"]
    assert [e.id for e in events if e.event == "token"] == [
        str(i) for i in range(1, len(tokens) + 1)
    ]
    assert "".join(tokens).startswith("You asked: 'hello'.")
    assert events[-1].event == "complete"
    assert orjson.loads(events[-1].data) == {"success": True, "tokens": len(tokens)}
