"""A direct stream whose generator fails mid-response ends with an ``error`` event and a clean
end of body (never a silent cut), the failure logged and traced under the same ``error_id``,
no exception text on the wire, and the lease released."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from streaming_mw import (
    ChannelConfig,
    StreamingMiddleware,
    StreamLeaseConfig,
    init_streaming,
    stream_lease,
)
from streaming_mw.runtime import StreamingContainer
from streaming_mw.sse import encode, sse_headers
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.helpers.asgi import SpecVersion
    from tests.helpers.uvicorn_server import StartUvicornThread

SECRET = "password=hunter2 at db-7.internal"  # noqa: S105 (what must not leak)


def build_app(container: StreamingContainer) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/chat")
    async def chat(user: str, fail: str = "raise") -> StreamingResponse:
        async def tokens() -> AsyncIterator[bytes]:
            yield encode(data={"token": "Hello"}, event="token", id="1")
            yield encode(data={"token": "world"}, event="token", id="2")
            if fail == "raise":
                raise RuntimeError(f"LLM backend failed: {SECRET}")
            yield encode(data="x", event="bad\nname")  # refused by the encoder

        async with stream_lease(user):
            return StreamingResponse(tokens(), headers=sse_headers())

    return app


def make_container(expose: bool = False) -> StreamingContainer:
    container = StreamingContainer()
    init_streaming(
        mode="memory",
        lease_config=StreamLeaseConfig(limit=1, ttl_seconds=30),
        channel_config=ChannelConfig(expose_errors=expose),
        container=container,
    )
    return container


@pytest.fixture(params=["2.3", "2.4"])
def spec(request: pytest.FixtureRequest) -> SpecVersion:
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize("fail", ["raise", "encoder"])
async def test_a_failing_generator_ends_with_an_error_event(
    spec: SpecVersion, fail: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    container = make_container()
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", f"/chat?user=alice&fail={fail}") as response:
            body = await response.read_all()  # IncompleteResponse if the body were cut
            await response.wait_finished()
            assert response.exception is None  # nothing left for the server to log
        # the lease is back: the same user may stream again (limit 1)
        async with client.stream("GET", f"/chat?user=alice&fail={fail}") as again:
            assert again.status == 200
            await again.read_all()
    frames = body.split(b"\n\n")
    assert [b"event: token" in f for f in frames[:2]] == [True, True]
    assert b"event: error" in frames[2]
    error = orjson.loads(frames[2].split(b"data: ", 1)[1])
    assert error == {
        "message": "internal error",
        "reason": "internal_error",
        "error_id": error["error_id"],
    }
    assert b"hunter2" not in body
    assert b"bad" not in body
    [record] = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert "released 1 lease(s) of alice: stream /chat ended (error)" in caplog.text


async def test_expose_errors_names_the_failure_for_development() -> None:
    app = build_app(make_container(expose=True))
    async with lifespan(app), AsgiClient(app).stream("GET", "/chat?user=bob") as response:
        body = await response.read_all()
    error = orjson.loads(body.split(b"\n\n")[2].split(b"data: ", 1)[1])
    assert error["type"] == "RuntimeError"
    assert SECRET in error["detail"]


async def test_under_uvicorn_the_body_ends_cleanly_and_nothing_is_unhandled(
    uvicorn_thread: StartUvicornThread, caplog: pytest.LogCaptureFixture
) -> None:
    server = uvicorn_thread(build_app(make_container()))
    async with SSEClient.connect(server.base_url, "/chat?user=carol") as client:
        events = [event async for event in client.events(timeout=5.0)]
    assert [e.event for e in events] == ["token", "token", "error"]
    assert "Exception in ASGI application" not in caplog.text
