"""Resumable streams in one process (memory): an id that is taken is refused with ``409`` and
the stream it names is left untouched, whoever owns it; the stream is labelled ``resumable`` on
its span and in the stream metrics; and the shutdown drain treats it as a direct stream (its
history dies with the process)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from streaming_mw import ChannelConfig, init_telemetry
from streaming_mw.errors import StreamExistsError, StreamingError
from streaming_mw.runtime import StreamingContainer
from streaming_mw.runtime.shutdown import start_drain
from streaming_mw.telemetry import ATTR_CLOSE, ATTR_KIND, ATTR_STREAM_ID
from tests.apps.otel_capture import Capture
from tests.apps.resumable import build_app
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.leases import eventually
from tests.helpers.resumable import data, new_id, read_until_end

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI


pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def otel() -> AsyncIterator[Capture]:
    capture = Capture()
    yield capture
    capture.shutdown()


@pytest.fixture
async def app(otel: Capture) -> AsyncIterator[tuple[FastAPI, StreamingContainer]]:
    container = StreamingContainer()
    application = build_app(container, mode="memory")
    init_telemetry(otel.tracer_provider, otel.meter_provider, container=container)
    async with asyncio.timeout(50), lifespan(application):
        yield application, container


async def get(client: AsgiClient, path: str) -> tuple[int, Any]:
    async with client.stream("GET", path) as response:
        body = await response.read_all()
        return response.status, orjson.loads(body) if body else None


async def none_active(client: AsgiClient, user: str) -> bool:
    return int((await get(client, f"/leases/{user}"))[1]["active"]) == 0


async def test_a_taken_stream_id_is_refused_with_409_and_left_untouched(
    app: tuple[FastAPI, StreamingContainer],
) -> None:
    application, _ = app
    client = AsgiClient(application, spec_version="2.4")
    alice, stream = new_id("alice"), new_id("s")
    async with client.stream("GET", f"/chat?user={alice}&stream={stream}&count=5&delay=0") as r:
        original = await read_until_end(r.read_event)
    live = new_id("live")
    path = f"/chat?user={alice}&stream={live}&count=100000&delay=0.01"
    async with client.stream("GET", path) as running:
        await running.read_event()
        await running.read_event()
        for taken in (stream, live):  # ended or running
            for user in (alice, "mallory"):  # its owner or anyone else
                status, body = await get(client, f"/chat?user={user}&stream={taken}&count=3")
                assert (status, body) == (409, {"detail": f"stream {taken!r} already exists"})
        await eventually(lambda: none_active(client, "mallory"))  # the refused lease came back
        assert int((await get(client, f"/leases/{alice}"))[1]["active"]) == 1  # the live one
        token = await running.read_event()
        assert data(token)["token"].startswith("t")  # the running stream goes on, its own
        running.disconnect()
    async with client.stream("GET", f"/streams/{stream}?user={alice}") as replay:
        again = await read_until_end(replay.read_event)
    assert [(e.id, e.event, e.data) for e in again] == [
        (e.id, e.event, e.data) for e in original[1:]
    ]
    assert issubclass(StreamExistsError, StreamingError)


async def test_the_span_and_the_metrics_say_resumable(
    app: tuple[FastAPI, StreamingContainer], otel: Capture
) -> None:
    application, _ = app
    client = AsgiClient(application, spec_version="2.4")
    user, stream = new_id("u"), new_id("s")
    async with client.stream("GET", f"/chat?user={user}&stream={stream}&count=4&delay=0") as r:
        events = await read_until_end(r.read_event)
    [span] = await otel.wait_spans("sse.stream")
    attributes = dict(span.attributes or {})
    assert (attributes[ATTR_KIND], attributes[ATTR_STREAM_ID]) == ("resumable", stream)
    assert attributes[ATTR_CLOSE] == "completed"
    closed = otel.points("streaming_mw.streams.closed")
    assert [(p.attributes[ATTR_KIND], p.attributes[ATTR_CLOSE], p.value) for p in closed] == [
        ("resumable", "completed", 1)
    ]
    sent = otel.points("streaming_mw.events.sent")
    assert [(p.attributes[ATTR_KIND], p.value) for p in sent] == [("resumable", len(events))]
    active = otel.points("streaming_mw.streams.active")
    assert [(p.attributes[ATTR_KIND], p.value) for p in active] == [("resumable", 0)]


async def test_in_memory_the_drain_treats_a_resumable_stream_as_direct() -> None:
    container = StreamingContainer()
    application = build_app(
        container, mode="memory", channel_config=ChannelConfig(drain_timeout=0.5)
    )
    client = AsgiClient(application, spec_version="2.4")
    user, short, long = new_id("u"), new_id("short"), new_id("long")
    short_path = f"/chat?user={user}&stream={short}&count=20&delay=0.01"
    long_path = f"/chat?user={user}&stream={long}&count=100000&delay=0.01"
    async with (
        asyncio.timeout(50),
        lifespan(application),
        client.stream("GET", short_path) as a,
        client.stream("GET", long_path) as b,
    ):
        await a.read_event()
        await b.read_event()
        drain = start_drain(container)
        finished = await read_until_end(a.read_event)  # it may finish within drain_timeout
        cut = await read_until_end(b.read_event)  # past it: `shutdown`
        assert await b.read_all() == b""  # the end of the body
        await drain
    assert [data(e)["token"] for e in finished[:-1]] == [f"t{i}" for i in range(1, 21)]
    assert (finished[-1].event, data(finished[-1])) == ("complete", {"success": True})
    assert (cut[-1].event, data(cut[-1])["reason"]) == ("error", "shutdown")
    assert [data(e)["token"] for e in cut[:-1]] == [f"t{i}" for i in range(1, len(cut))]
