"""FastAPI's own SSE types (`fastapi.sse`).

`ServerSentEvent` is accepted wherever a `StreamEvent` is: `as_stream_event`, the emitters'
``emit``, a channel's ``publish``, the direct helper `encode_stream_event` and the sources of
`resumable_response`. A route answering with FastAPI's `EventSourceResponse` — returned from
inside `stream_lease`, or as the ``response_class`` of a generator route — is tracked by the
middleware like any stream: its lease is held while it streams and released at its end or
disconnect, it is counted in the registry, and it gets its ``sse.stream`` span.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator  # noqa: TC003  (FastAPI reads route annotations)
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.sse import EventSourceResponse, ServerSentEvent, format_sse_event
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from streaming_mw import (
    ChannelConfig,
    InvalidEventError,
    Lease,
    SSEEmitter,
    StreamEvent,
    StreamingMiddleware,
    StreamLeaseConfig,
    encode_stream_event,
    init_streaming,
    lease_dependency,
    resumable_response,
    stream_lease,
    stream_response,
)
from streaming_mw._redis import make_client
from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend
from streaming_mw.channels.redis import RedisChannelBackend, SyncRedisChannel
from streaming_mw.config import QueueRedisConfig
from streaming_mw.errors import InvalidFieldError
from streaming_mw.events import as_stream_event
from streaming_mw.runtime import StreamingContainer
from streaming_mw.runtime.container import init_telemetry
from streaming_mw.sse import SSEEvent, SSEParser, encode_item
from streaming_mw.telemetry import ATTR_CLOSE, ATTR_KIND, ATTR_USER
from tests.apps.otel_capture import Capture
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.resumable import read_until_end
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from opentelemetry.sdk.trace import ReadableSpan

    from tests.helpers.asgi import SpecVersion
    from tests.helpers.uvicorn_server import StartUvicornThread

pytestmark = pytest.mark.timeout(60)

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])


class Reading(BaseModel):
    at: datetime
    value: float


def parsed(frames: bytes) -> list[SSEEvent]:
    return [item for item in SSEParser().feed(frames) if isinstance(item, SSEEvent)]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


# --- the conversion -------------------------------------------------------------------------


def test_each_field_maps_to_the_stream_event() -> None:
    sse = ServerSentEvent(data={"a": [1, 2], "b": "x\ny"}, event="token", id="7")
    event = as_stream_event(sse, stream_id="s-1")
    assert (event.type, event.data, event.id, event.stream_id) == (
        "token",
        {"a": [1, 2], "b": "x\ny"},
        "7",
        "s-1",
    )
    assert as_stream_event(event) is event


def test_an_event_without_a_name_is_a_message() -> None:
    # A browser dispatches a block without `event:` as `message`: the same listener.
    event = as_stream_event(ServerSentEvent(data="hello"))
    assert (event.type, event.data, event.id) == ("message", "hello", None)
    assert parsed(encode_stream_event(event)) == [SSEEvent('"hello"', "message")]


def test_data_is_the_json_fastapi_sends() -> None:
    reading = Reading(at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), value=1.5)
    for data in (reading, {"reading": reading, "tags": ("a", "b")}, [1.5, None, True]):
        event = as_stream_event(ServerSentEvent(data=data, event="reading"))
        if isinstance(data, BaseModel):
            expected = json.loads(data.model_dump_json())
        else:
            expected = jsonable_encoder(data)
        assert event.data == expected
        # the data line carries the same JSON value as FastAPI's own frame of the event
        [ours] = parsed(encode_stream_event(event))
        fastapi_frame = format_sse_event(data_str=json.dumps(expected), event="reading")
        [theirs] = parsed(fastapi_frame)
        assert (ours.event, orjson.loads(ours.data)) == (theirs.event, orjson.loads(theirs.data))


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"raw_data": "plain text"}, "raw_data"),
        ({"data": {"a": 1}, "retry": 3000}, "retry"),
        ({"data": {"a": 1}, "comment": "note"}, "comment"),
        ({"comment": "keep-alive"}, "comment"),
    ],
)
def test_what_a_stream_event_cannot_carry_is_refused(fields: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidEventError, match=rf"ServerSentEvent\({name}=\.\.\.\)"):
        as_stream_event(ServerSentEvent(**fields))


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"event": "a\nb"}, "event", "LF"),
        ({"event": "a\rb"}, "event", "CR"),
        ({"event": ""}, "event", "empty"),
        ({"id": "1\r\ndata: forged"}, "id", "CR"),
        ({"id": "1\x00"}, "id", "NUL"),
    ],
)
def test_fields_that_would_break_the_framing_are_refused_like_a_stream_events(
    fields: dict[str, Any], field: str, why: str
) -> None:
    # model_construct skips FastAPI's own checks (and FastAPI allows an empty event name).
    sse = ServerSentEvent.model_construct(data={"a": 1}, **fields)
    with pytest.raises(InvalidFieldError, match=why) as caught:
        as_stream_event(sse)
    assert caught.value.field == field
    with pytest.raises(InvalidFieldError, match=why):
        StreamEvent(fields.get("event", "x"), {"a": 1}, fields.get("id"))


def test_data_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="not JSON-serialisable"):
        as_stream_event(ServerSentEvent(data={"when": object()}))


@pytest.mark.parametrize("item", [{"data": 1}, "text", 42, None])
def test_anything_else_is_refused(item: object) -> None:
    with pytest.raises(InvalidEventError, match=r"StreamEvent or a fastapi\.sse\.ServerSentEvent"):
        as_stream_event(item)


# --- the direct helper --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sse",
    [
        ServerSentEvent(data="hello", event="greeting", id="1"),
        ServerSentEvent(data={"a": [1, 2]}, retry=2000),
        ServerSentEvent(raw_data="line one\nline two", event="log"),
        ServerSentEvent(comment="keep-alive"),
    ],
)
def test_encode_stream_event_frames_it_as_fastapi_does(sse: ServerSentEvent) -> None:
    frame = encode_stream_event(sse)
    assert frame == encode_item(sse)
    if sse.raw_data is not None:
        data_str: str | None = sse.raw_data
    else:
        data_str = None if sse.data is None else json.dumps(sse.data, separators=(",", ":"))
    theirs = format_sse_event(
        data_str=data_str, event=sse.event, id=sse.id, retry=sse.retry, comment=sse.comment
    )
    assert SSEParser().feed(frame) == SSEParser().feed(theirs)


# --- emitters and channels ------------------------------------------------------------------


def memory_channel() -> AsyncStreamChannel:
    config = ChannelConfig()
    return AsyncStreamChannel(MemoryChannelBackend(config), config)


async def history(channel: AsyncStreamChannel, stream_id: str) -> list[StreamEvent]:
    follower = await channel.follow(stream_id)
    events: list[StreamEvent] = []
    try:
        while (event := await follower.next(0)) is not None:
            events.append(event)
    finally:
        follower.aclose()
    return events


async def test_emit_publishes_a_server_sent_event() -> None:
    channel = memory_channel()
    emitter = SSEEmitter(channel)
    await emitter.open()
    first = await emitter.emit(ServerSentEvent(data={"n": 1}, event="tick", id="mine"))
    # from a worker thread, the other calling convention
    await asyncio.to_thread(lambda: emitter.emit(ServerSentEvent(data={"n": 2})))
    open_before = not emitter.closed
    last = await emitter.emit(ServerSentEvent(data={"success": True}, event="complete"))
    assert (open_before, emitter.closed, emitter.terminal) == (True, True, "complete")
    assert first.id == f"{emitter.epoch}-1"  # the stream's cursor, not the event's own id
    assert last.stream_id == emitter.stream_id
    events = await history(channel, emitter.stream_id)
    assert [(e.type, e.data, e.id) for e in events] == [
        ("tick", {"n": 1}, f"{emitter.epoch}-1"),
        ("message", {"n": 2}, f"{emitter.epoch}-2"),
        ("complete", {"success": True}, f"{emitter.epoch}-3"),
    ]


async def test_emit_refuses_a_bad_event_and_changes_nothing() -> None:
    channel = memory_channel()
    emitter = SSEEmitter(channel)
    await emitter.open()
    with pytest.raises(InvalidEventError, match="raw_data"):
        emitter.emit(ServerSentEvent(raw_data="done", event="complete"))
    with pytest.raises(InvalidEventError, match="takes its data from the event"):
        emitter.emit(ServerSentEvent(event="complete"), {"success": True})
    assert not emitter.closed
    await emitter.emit(StreamEvent("complete", {"success": True}))  # a StreamEvent too
    assert [e.type for e in await history(channel, emitter.stream_id)] == ["complete"]


async def test_async_channel_publishes_a_server_sent_event() -> None:
    channel = memory_channel()
    await channel.create("s-1")
    seq = await channel.publish("s-1", ServerSentEvent(data={"percent": 50}, event="progress"))
    await channel.publish("s-1", ServerSentEvent(event="complete", data={"success": True}))
    events = await history(channel, "s-1")
    assert seq == 1
    assert [(e.type, e.data) for e in events] == [
        ("progress", {"percent": 50}),
        ("complete", {"success": True}),
    ]
    meta = await channel.meta("s-1")
    assert meta is not None
    assert meta.ended


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[RedisChannelBackend]:
    client = make_client(QueueRedisConfig(redis_url))
    backend = RedisChannelBackend(client, ChannelConfig(key_prefix="fastapi-sse:"))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()
        await client.aclose()


@pytest.mark.redis
async def test_sync_redis_channel_publishes_a_server_sent_event(
    redis_backend: RedisChannelBackend, redis_url: str
) -> None:
    def produce() -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            channel = SyncRedisChannel(client, redis_backend.config)
            channel.create("fastapi-sse")
            channel.publish("fastapi-sse", ServerSentEvent(data={"n": 1}, event="log"))
            channel.publish(
                "fastapi-sse", ServerSentEvent(data={"success": True}, event="complete")
            )
        finally:
            client.close()

    await asyncio.wait_for(asyncio.to_thread(produce), 10)
    channel = AsyncStreamChannel(redis_backend, redis_backend.config)
    events = await asyncio.wait_for(history(channel, "fastapi-sse"), 10)
    assert [(e.type, e.data) for e in events] == [
        ("log", {"n": 1}),
        ("complete", {"success": True}),
    ]


# --- resumable streams ----------------------------------------------------------------------


def resumable_app(container: StreamingContainer) -> FastAPI:
    init_streaming(
        mode="memory",
        lease_config=StreamLeaseConfig(limit=5, ttl_seconds=30),
        container=container,
    )
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    async def answer(count: int, bad: bool) -> AsyncIterator[ServerSentEvent]:
        for index in range(count):
            yield ServerSentEvent(data={"token": f"t{index}"}, event="token", id="ignored")
            await asyncio.sleep(0)
        if bad:
            yield ServerSentEvent(raw_data="not json", event="token")
        yield ServerSentEvent(data={"success": True, "tokens": count}, event="complete")

    @app.get("/chat")
    async def chat(user: str, stream: str, count: int = 5, bad: bool = False) -> Any:
        async with stream_lease(user):
            return resumable_response(answer(count, bad), user_id=user, stream_id=stream)

    @app.get("/streams/{stream_id}")
    async def follow(stream_id: str, request: Request, user: str) -> Any:
        return stream_response(stream_id, request, user_id=user)

    return app


@SPECS
async def test_a_resumable_source_yields_server_sent_events(spec: SpecVersion) -> None:
    container = StreamingContainer()
    app = resumable_app(container)
    client = AsgiClient(app, spec_version=spec)
    async with lifespan(app):
        async with client.stream("GET", "/chat?user=u&stream=s-1&count=5") as response:
            assert response.status == 200
            assert (await response.read_event()).event == "stream"
            events = await read_until_end(response.read_event)
        assert [(e.event, orjson.loads(e.data)) for e in events] == [
            *(("token", {"token": f"t{i}"}) for i in range(5)),
            ("complete", {"success": True, "tokens": 5}),
        ]
        epoch = (events[0].id or "").rpartition("-")[0]
        assert [e.id for e in events] == [f"{epoch}-{n}" for n in range(1, 7)]
        # the history holds the same events under the same cursors
        headers = {"last-event-id": f"{epoch}-2"}
        async with client.stream("GET", "/streams/s-1?user=u", headers=headers) as again:
            replayed = await read_until_end(again.read_event)
        assert [(e.id, e.event, e.data) for e in replayed] == [
            (e.id, e.event, e.data) for e in events[2:]
        ]
        await eventually(lambda: _no_leases(container, "u"), "the lease comes back")


async def _no_leases(container: StreamingContainer, user: str) -> bool:
    return int(await container.lease_limiter().active(user)) == 0


async def test_a_resumable_source_yielding_raw_data_ends_with_an_error() -> None:
    container = StreamingContainer()
    app = resumable_app(container)
    client = AsgiClient(app)
    async with lifespan(app):
        async with client.stream("GET", "/chat?user=u&stream=s-2&count=2&bad=true") as response:
            assert (await response.read_event()).event == "stream"
            events = await read_until_end(response.read_event)
        assert [e.event for e in events] == ["token", "token", "error"]
        error = orjson.loads(events[-1].data)
        assert error["reason"] == "internal_error"
        assert "error_id" in error
        await eventually(lambda: _no_leases(container, "u"), "the lease comes back")


# --- EventSourceResponse under StreamingMiddleware ------------------------------------------


@pytest.fixture
def otel() -> Iterator[Capture]:
    capture = Capture()
    yield capture
    capture.shutdown()


def tracked_app(otel: Capture, *, limit: int = 1) -> tuple[FastAPI, StreamingContainer]:
    """Three ways to stream with FastAPI's `EventSourceResponse` under one user's lease."""
    container = StreamingContainer()
    init_streaming(
        mode="memory",
        lease_config=StreamLeaseConfig(limit=limit, ttl_seconds=30),
        container=container,
    )
    init_telemetry(otel.tracer_provider, otel.meter_provider, container=container)
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    async def frames(count: int, delay: float) -> AsyncIterator[bytes]:
        for index in range(count):
            yield format_sse_event(data_str=json.dumps({"i": index}), event="tick")
            await asyncio.sleep(delay)

    async def events(count: int, delay: float) -> AsyncIterator[ServerSentEvent]:
        for index in range(count):
            yield ServerSentEvent(data={"i": index}, event="tick")
            await asyncio.sleep(delay)

    @app.get("/returned")
    async def returned(user: str, count: int = 3, delay: float = 0.0) -> EventSourceResponse:
        async with stream_lease(user):
            return EventSourceResponse(frames(count, delay))

    @app.get("/generated", response_class=EventSourceResponse)
    async def generated(
        user: str, count: int = 3, delay: float = 0.0
    ) -> AsyncIterator[ServerSentEvent]:
        async with stream_lease(user):
            async for event in events(count, delay):
                yield event

    async def identity(user: str) -> str:
        return user

    @app.get("/depends", response_class=EventSourceResponse)
    async def depends(
        count: int = 3,
        delay: float = 0.0,
        lease: Lease = Depends(lease_dependency(identity)),
    ) -> AsyncIterator[ServerSentEvent]:
        async for event in events(count, delay):
            yield event

    return app, container


ROUTES = pytest.mark.parametrize("route", ["returned", "generated", "depends"])


def span_attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def _none_open(container: StreamingContainer) -> bool:
    return container.stream_registry().count() == 0


async def _held(container: StreamingContainer, user: str) -> bool:
    return int(await container.lease_limiter().active(user)) == 1


@SPECS
@ROUTES
async def test_a_completed_event_source_response_is_tracked(
    otel: Capture, spec: SpecVersion, route: str
) -> None:
    app, container = tracked_app(otel)
    client = AsgiClient(app, spec_version=spec)
    async with lifespan(app):
        async with client.stream("GET", f"/{route}?user=u&count=3&delay=0.3") as response:
            assert response.status == 200
            assert (response.header("content-type") or "").startswith("text/event-stream")
            first = await response.read_event()
            assert (first.event, orjson.loads(first.data)) == ("tick", {"i": 0})
            await eventually(lambda: _held(container, "u"), "the lease is held")
            assert container.stream_registry().by_user() == {"u": 1}
            rest = parsed(await response.read_all(10))
        assert [orjson.loads(e.data) for e in rest] == [{"i": 1}, {"i": 2}]
        await eventually(lambda: _no_leases(container, "u"), "the lease comes back")
        await eventually(lambda: _none_open(container), "no stream is open")
        [span] = await otel.wait_spans("sse.stream")
    assert span_attrs(span)[ATTR_KIND] == "direct"
    assert span_attrs(span)[ATTR_USER] == "u"
    assert span_attrs(span)[ATTR_CLOSE] == "completed"
    assert span.status.status_code is StatusCode.UNSET


@SPECS
@ROUTES
async def test_a_disconnect_releases_the_lease_of_an_event_source_response(
    otel: Capture, spec: SpecVersion, route: str
) -> None:
    app, container = tracked_app(otel)
    client = AsgiClient(app, spec_version=spec)
    async with lifespan(app):
        async with client.stream("GET", f"/{route}?user=u&count=100000&delay=0.02") as response:
            await response.read_event()
            await response.read_event()
            await eventually(lambda: _held(container, "u"), "the lease is held")
            response.disconnect()
            await response.wait_finished(10)
        await eventually(lambda: _no_leases(container, "u"), "the lease comes back")
        await eventually(lambda: _none_open(container), "no stream is open")
        [span] = await otel.wait_spans("sse.stream")
    assert span_attrs(span)[ATTR_CLOSE] == "client_disconnect"
    assert span_attrs(span)[ATTR_USER] == "u"
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("route", ["returned", "depends"])
async def test_an_event_source_response_counts_against_the_limit(otel: Capture, route: str) -> None:
    app, container = tracked_app(otel, limit=1)
    client = AsgiClient(app)
    async with lifespan(app):
        async with client.stream("GET", f"/{route}?user=u&count=100000&delay=0.02") as first:
            await first.read_event()
            async with client.stream("GET", f"/{route}?user=u") as second:
                assert second.status == 429
                await second.read_all()
            async with client.stream("GET", f"/{route}?user=other&count=1") as third:
                assert third.status == 200
                await third.read_all()
            first.disconnect()
        await eventually(lambda: _no_leases(container, "u"), "the lease comes back")
        async with client.stream("GET", f"/{route}?user=u&count=1") as again:
            assert again.status == 200
            await again.read_all()


async def test_a_lease_refused_inside_a_generator_route_ends_the_stream(otel: Capture) -> None:
    # The documented limit of a lease taken in the body: the status line is already chosen.
    app, container = tracked_app(otel, limit=1)
    client = AsgiClient(app)
    async with lifespan(app):
        async with client.stream("GET", "/generated?user=u&count=100000&delay=0.02") as first:
            await first.read_event()
            async with client.stream("GET", "/generated?user=u") as second:
                assert second.status == 200
                [error] = parsed(await second.read_all())
            first.disconnect()
        await eventually(lambda: _no_leases(container, "u"), "the lease comes back")
    assert error.event == "error"
    assert orjson.loads(error.data)["reason"] == "internal_error"


@ROUTES
async def test_an_aborted_connection_under_uvicorn_releases_the_lease(
    otel: Capture, uvicorn_thread: StartUvicornThread, route: str
) -> None:
    app, container = tracked_app(otel)
    server = uvicorn_thread(app)
    path = f"/{route}?user=u&count=100000&delay=0.02"
    async with SSEClient.connect(server.base_url, path) as client:
        assert client.status == 200
        for _ in range(2):
            assert (await client.next_event(10)).event == "tick"
        client.abort()
    [span] = await otel.wait_spans("sse.stream", timeout=15)
    assert span_attrs(span)[ATTR_CLOSE] == "client_disconnect"
    assert span_attrs(span)[ATTR_USER] == "u"
    async with SSEClient.connect(server.base_url, "/returned?user=u&count=1") as again:
        assert again.status == 200  # the slot came back
        await again.read_body(10)
    await eventually(lambda: _none_open(container), "no stream is open")
