"""OpenTelemetry (DESIGN §6): stream spans, producer/consumer spans, lease events, metrics.

Each test builds explicit SDK providers (`Capture`), hands them to a private container
(`init_telemetry`) and to FastAPI's native telemetry, and drives `tests.apps.traced_web` through
the raw ASGI harness (or a uvicorn thread). The global providers are never set here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, StatusCode

from streaming_mw import ChannelConfig, StreamLeaseConfig, init_jobs, init_streaming
from streaming_mw.runtime import StreamingContainer
from streaming_mw.runtime.container import init_telemetry
from streaming_mw.sse import SSEEvent, SSEParser, encode
from streaming_mw.telemetry import (
    ATTR_BYTES,
    ATTR_CLOSE,
    ATTR_EVENTS,
    ATTR_JOB_ID,
    ATTR_KIND,
    ATTR_OPERATION,
    ATTR_OUTCOME,
    ATTR_RESUME,
    ATTR_STREAM_ID,
    ATTR_USER,
)
from tests.apps.job_tasks import SLOW_ASYNC, make_config
from tests.apps.otel_capture import Capture, ancestors, span_id, trace_id
from tests.apps.traced_web import build_app
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from fastapi import FastAPI
    from opentelemetry.sdk.trace import ReadableSpan

    from tests.helpers.asgi import AsgiResponse, SpecVersion
    from tests.helpers.uvicorn_server import StartUvicornThread

STREAM = "sse.stream"
ACQUIRED = "streaming_mw.lease.acquired"
REJECTED = "streaming_mw.lease.rejected"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "STREAMING_MODE", "JOBS_RUN_LOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def otel() -> Iterator[Capture]:
    capture = Capture()
    yield capture
    capture.shutdown()


def make_app(
    otel: Capture | None, *, limit: int = 5, jobs: bool = False, **channel: Any
) -> tuple[FastAPI, StreamingContainer]:
    """`tests.apps.traced_web` on a private in-memory container, traced into ``otel``."""
    container = StreamingContainer()
    init_streaming(
        mode="memory",
        channel_config=ChannelConfig(**channel),
        lease_config=StreamLeaseConfig(limit=limit, ttl_seconds=30),
        container=container,
    )
    if jobs:
        init_jobs(make_config(), container=container)
    if otel is None:
        return build_app(container), container
    init_telemetry(otel.tracer_provider, otel.meter_provider, container=container)
    return build_app(container, otel.tracer_provider, otel.meter_provider), container


@asynccontextmanager
async def post(client: AsgiClient, path: str, payload: Any) -> AsyncIterator[AsgiResponse]:
    headers = {"content-type": "application/json"}
    async with client.stream("POST", path, body=json.dumps(payload).encode(), headers=headers) as r:
        yield r


def sse_events(body: bytes) -> list[SSEEvent]:
    return [item for item in SSEParser().feed(body) if isinstance(item, SSEEvent)]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def server_of(span: ReadableSpan, otel: Capture) -> ReadableSpan:
    """FastAPI's HTTP server span above ``span`` (operation spans may sit in between)."""
    servers = [s for s in ancestors(span, otel.spans()) if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, f"{span.name} has no server span among its ancestors"
    return servers[0]


def events_named(spans: list[ReadableSpan], name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for s in spans for e in s.events if e.name == name]


# --- 1. a queue stream ---------------------------------------------------------------------


async def test_completed_queue_stream_is_one_span_under_the_server_span(otel: Capture) -> None:
    app, _ = make_app(otel)
    async with lifespan(app), post(AsgiClient(app), "/deploy/async", {"steps": 3}) as response:
        assert response.status == 200
        stream_id = response.header("x-stream-id")
        body = await response.read_all()
        await response.wait_finished()
        [publish] = await otel.wait_spans("stream publish")
    events = sse_events(body)
    assert [e.event for e in events] == ["progress"] * 3 + ["complete"]

    [span] = otel.spans(STREAM)
    assert attrs(span) == {
        ATTR_KIND: "queue",
        ATTR_STREAM_ID: stream_id,
        ATTR_CLOSE: "completed",
        ATTR_EVENTS: 4,
        ATTR_BYTES: len(body),
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.kind is SpanKind.INTERNAL

    server = server_of(span, otel)
    assert server.parent is None
    assert server.name == "POST /deploy/{kind}"
    assert attrs(server)["http.response.status_code"] == 200
    assert trace_id(span) == trace_id(server)

    assert publish.kind is SpanKind.PRODUCER
    assert attrs(publish)[ATTR_STREAM_ID] == stream_id
    assert trace_id(publish) == trace_id(server)
    assert server in ancestors(publish, otel.spans())
    assert [s.name for s in otel.trace(trace_id(server)) if s.name == STREAM] == [STREAM]


# --- 2. client disconnects -------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_disconnect_mid_stream_is_a_normal_close(otel: Capture, spec: SpecVersion) -> None:
    app, _ = make_app(otel)
    client = AsgiClient(app, spec_version=spec)
    async with lifespan(app):
        async with post(client, "/deploy/async", {"steps": 500, "delay": 0.02}) as response:
            stream_id = response.header("x-stream-id")
            for _ in range(2):
                assert (await response.read_event()).event == "progress"
            response.disconnect()
            await response.wait_finished()
        [span] = await otel.wait_spans(STREAM)
    assert attrs(span)[ATTR_CLOSE] == "client_disconnect"
    assert attrs(span)[ATTR_STREAM_ID] == stream_id
    assert attrs(span)[ATTR_EVENTS] >= 2
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [("POST", "/deploy/async", "queue"), ("GET", "/chat/stream?user=u1&delay=0.02", "direct")],
)
async def test_aborted_connection_under_uvicorn_is_a_normal_close(
    otel: Capture, uvicorn_thread: StartUvicornThread, method: str, path: str, kind: str
) -> None:
    app, _ = make_app(otel)
    server = uvicorn_thread(app)
    payload = {"steps": 500, "delay": 0.02} if method == "POST" else None
    async with SSEClient.connect(server.base_url, path, method=method, json=payload) as client:
        assert client.status == 200
        for _ in range(2):
            await client.next_event()
        client.abort()
    [span] = await otel.wait_spans(STREAM)
    assert attrs(span)[ATTR_KIND] == kind
    assert attrs(span)[ATTR_CLOSE] == "client_disconnect"
    assert span.status.status_code is StatusCode.UNSET
    # The server span ends after the stream span (when the app call returns): wait for it.
    deadline = time.monotonic() + 5
    while not any(s.kind is SpanKind.SERVER for s in ancestors(span, otel.spans())):
        assert time.monotonic() < deadline, "the server span never ended"
        await asyncio.sleep(0.01)
    assert server_of(span, otel).kind is SpanKind.SERVER


# --- 3. direct streaming with stream_lease -----------------------------------------------------


async def test_direct_stream_spans_and_lease_events(otel: Capture) -> None:
    app, _ = make_app(otel, limit=2)
    client = AsgiClient(app)
    path = "/chat/stream?user=alice&count=4&delay=0.3"
    async with (
        lifespan(app),
        client.stream("GET", path) as first,
        client.stream("GET", path) as second,
    ):
        for response in (first, second):
            assert response.status == 200
            assert (await response.read_event()).event == "token"
        async with client.stream("GET", path) as third:
            assert third.status == 429
            await third.read_all()
            await third.wait_finished()
        for response in (first, second):
            assert [e.id for e in sse_events(await response.read_all())] == ["1", "2", "3"]
        spans = await otel.wait_spans(STREAM, 2)

    body = b"".join(encode(data={"index": i}, event="token", id=str(i)) for i in range(4))
    for span in spans:
        assert attrs(span) == {
            ATTR_KIND: "direct",
            ATTR_USER: "alice",
            ATTR_CLOSE: "completed",
            ATTR_EVENTS: 4,
            ATTR_BYTES: len(body),
        }
        assert span.status.status_code is StatusCode.UNSET
        request_spans = otel.trace(trace_id(span))
        assert events_named(request_spans, ACQUIRED) == [{ATTR_USER: "alice"}]
        assert events_named(request_spans, REJECTED) == []

    [refused] = [s for s in otel.server_spans() if attrs(s)["http.response.status_code"] == 429]
    refused_spans = otel.trace(trace_id(refused))
    assert events_named(refused_spans, REJECTED) == [
        {ATTR_USER: "alice", "streaming_mw.lease.limit": 2, "streaming_mw.lease.scope": "user"}
    ]
    assert events_named(refused_spans, ACQUIRED) == []
    assert [s for s in refused_spans if s.name == STREAM] == []
    assert otel.total("streaming_mw.leases.rejected") == 1
    assert [p.attributes for p in otel.points("streaming_mw.leases.rejected")] == [
        {"streaming_mw.lease.scope": "user"}
    ]
    assert otel.total("streaming_mw.leases.acquired") == 2
    assert otel.total("streaming_mw.leases.released") == 2


# --- 4. resume and idle timeout ----------------------------------------------------------------


async def test_resumed_stream_records_its_cursor(otel: Capture) -> None:
    app, _ = make_app(otel)
    client = AsgiClient(app)
    async with lifespan(app):
        async with post(client, "/deploy/async", {"steps": 3}) as response:
            stream_id = response.header("x-stream-id")
            first = sse_events(await response.read_all())
        [original] = await otel.wait_spans(STREAM)
        cursor = first[1].id
        assert cursor is not None
        headers = {"last-event-id": cursor}
        async with client.stream("GET", f"/streams/{stream_id}", headers=headers) as response:
            rest = sse_events(await response.read_all())
        [resumed] = await otel.wait_spans(STREAM, where=lambda s: s is not original)
    assert [e.id for e in rest] == [e.id for e in first[2:]]
    assert ATTR_RESUME not in attrs(original)
    assert attrs(resumed)[ATTR_RESUME] == cursor
    assert attrs(resumed)[ATTR_STREAM_ID] == stream_id
    assert attrs(resumed)[ATTR_EVENTS] == 2
    assert attrs(resumed)[ATTR_CLOSE] == "completed"
    assert server_of(resumed, otel).name == "GET /streams/{stream_id}"


async def test_idle_timeout_close_reason(otel: Capture) -> None:
    app, _ = make_app(otel, max_idle_time=0.3, ping_interval=0.1)
    async with lifespan(app), post(AsgiClient(app), "/deploy/silent", {"sleep": 5}) as response:
        [event] = sse_events(await response.read_all())
        [span] = await otel.wait_spans(STREAM)
    assert event.event == "error"
    assert json.loads(event.data)["reason"] == "idle_timeout"
    assert attrs(span)[ATTR_CLOSE] == "idle_timeout"
    assert attrs(span)[ATTR_EVENTS] == 1
    assert span.status.status_code is not StatusCode.ERROR


# --- 5. metrics --------------------------------------------------------------------------------


async def test_stream_metrics(otel: Capture) -> None:
    # Keep-alive pings go out between the events: they are not events.
    app, _ = make_app(otel, ping_interval=0.05)
    async with lifespan(app):
        assert otel.total("streaming_mw.streams.active") == 0
        async with post(AsgiClient(app), "/deploy/async", {"steps": 5, "delay": 0.15}) as r:
            received = [await r.read_event()]
            assert otel.total("streaming_mw.streams.active") == 1
            while received[-1].event != "complete":
                received.append(await r.read_event())
            await r.read_all()
            await r.wait_finished()
            assert "ping" in r.comments
        await otel.wait_spans(STREAM)
    assert [e.event for e in received] == ["progress"] * 5 + ["complete"]
    assert otel.total("streaming_mw.streams.active") == 0
    assert otel.total("streaming_mw.events.sent") == len(received)
    count, total = otel.histogram("streaming_mw.delivery.lag")
    assert count > 0
    assert 0 <= total < 5 * count


# --- 6. no SDK at all ----------------------------------------------------------------------------


async def test_without_an_sdk_everything_works_and_nothing_is_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
    caplog.set_level(logging.WARNING)
    app, container = make_app(None, limit=1, jobs=True)
    client = AsgiClient(app)
    async with lifespan(app):
        async with post(client, "/deploy/async", {"steps": 2}) as response:
            assert [e.event for e in sse_events(await response.read_all())] == [
                "progress",
                "progress",
                "complete",
            ]
        async with client.stream("GET", "/chat/stream?user=bob&count=2&delay=0.2") as chat:
            async with client.stream("GET", "/chat/stream?user=bob") as refused:
                assert refused.status == 429
            assert len(sse_events(await chat.read_all())) == 2
        async with post(client, f"/jobs/{SLOW_ASYNC}/stream", {"steps": 2, "delay": 0}) as job:
            assert sse_events(await job.read_all())[-1].event == "complete"
        span = container.telemetry().tracer.start_span("probe")
        assert not span.is_recording()
        span.end()
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


# --- 7. jobs in one process --------------------------------------------------------------------


async def test_in_process_job_is_traced_from_enqueue_to_run(otel: Capture) -> None:
    app, _ = make_app(otel, jobs=True)
    path = f"/jobs/{SLOW_ASYNC}/stream"
    async with lifespan(app), post(AsgiClient(app), path, {"steps": 2, "delay": 0}) as response:
        stream_id = response.header("x-stream-id")
        assert sse_events(await response.read_all())[-1].event == "complete"
        [producer] = await otel.wait_spans("default publish")
        [consumer] = await otel.wait_spans("default process")
        [stream] = await otel.wait_spans(STREAM)

    assert producer.kind is SpanKind.PRODUCER
    job_id = attrs(producer)[ATTR_JOB_ID]
    assert attrs(producer)[ATTR_OPERATION] == SLOW_ASYNC
    assert attrs(producer)[ATTR_STREAM_ID] == stream_id
    server = server_of(producer, otel)
    assert server.name == "POST /jobs/{operation}/stream"

    assert consumer.kind is SpanKind.CONSUMER
    assert trace_id(consumer) == trace_id(producer)
    assert consumer.parent is not None
    assert consumer.parent.span_id == span_id(producer)
    assert attrs(consumer)[ATTR_JOB_ID] == job_id

    assert server_of(stream, otel) is server
    assert attrs(stream)[ATTR_STREAM_ID] == stream_id
    count, _ = otel.histogram("streaming_mw.job.duration", {ATTR_OUTCOME: "done"})
    assert count == 1
