"""The examples run: each is served by a real uvicorn server and read as a browser would."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import orjson
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from examples.demo.app import LEASES_PER_USER
from examples.demo.app import app as demo_app
from examples.telemetry import app as telemetry_app
from streaming_mw import init_telemetry
from streaming_mw.runtime import get_container
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
        stream_id = client.headers["x-stream-id"]
        events = [event async for event in client.events(timeout=5.0)]
    assert (events[0].event, orjson.loads(events[0].data)) == ("stream", {"stream_id": stream_id})
    tokens = [orjson.loads(e.data)["token"] for e in events if e.event == "token"]
    ids = [e.id for e in events if e.event == "token"]
    assert [int(str(i).rpartition("-")[2]) for i in ids] == list(range(1, len(tokens) + 1))
    assert "".join(tokens).startswith("You asked: 'hello'.")
    assert events[-1].event == "complete"
    assert orjson.loads(events[-1].data) == {"success": True, "tokens": len(tokens)}


async def test_demo_chat_answer_continues_after_a_reload(
    uvicorn_thread: StartUvicornThread,
) -> None:
    server = uvicorn_thread(demo_app)
    path = "/chat/stream?prompt=reload&delay=0.02&user=reloader"
    async with SSEClient.connect(server.base_url, path) as client:
        stream_id = client.headers["x-stream-id"]
        await client.next_event()  # the stream id
        shown = [await client.next_event() for _ in range(5)]
        client.abort()  # the page reloads
    cursor = shown[-1].id
    follow = f"/streams/{stream_id}?user=reloader&last_event_id={cursor}"
    async with SSEClient.connect(server.base_url, follow) as again:
        assert again.status == 200
        rest = [event async for event in again.events(timeout=5.0)]
    seqs = [int(str(e.id).rpartition("-")[2]) for e in shown + rest]
    assert seqs == list(range(1, len(seqs) + 1))  # every token once, in order
    assert rest[-1].event == "complete"
    assert orjson.loads(rest[-1].data)["tokens"] == len(seqs) - 1
    async with SSEClient.connect(server.base_url, "/") as page:
        html = (await page.read_body()).decode()
    assert "sessionStorage" in html
    assert "last_event_id" in html


async def test_demo_deploy_streams_logs_progress_and_resumes(
    uvicorn_thread: StartUvicornThread,
) -> None:
    server = uvicorn_thread(demo_app)
    body = {"app": "shop", "environment": "test", "delay": 0.03}
    deploy = "/deploy?user=ana"
    async with SSEClient.connect(server.base_url, deploy, method="POST", json=body) as client:
        assert client.status == 200
        stream_id = client.headers["x-stream-id"]
        first = [await client.next_event() for _ in range(5)]
        client.abort()
    async with SSEClient.connect(server.base_url, f"/streams/{stream_id}?user=bob") as other:
        assert other.status == 404  # the stream is ana's: to anyone else it does not exist
    resume = f"/streams/{stream_id}?user=ana"
    headers = {"Last-Event-ID": first[-1].id or ""}
    async with SSEClient.connect(server.base_url, resume, headers=headers) as client:
        rest = [event async for event in client.events(timeout=10.0)]
    events = first + rest
    seqs = [int((event.id or "").rsplit("-", 1)[1]) for event in events]
    assert seqs == list(range(1, len(events) + 1))
    assert {event.event for event in events} == {"log", "progress", "complete"}
    assert orjson.loads(events[0].data)["message"].endswith("shop to test...")
    final = orjson.loads(events[-1].data)
    assert events[-1].event == "complete"
    assert final["success"] is True
    assert final["deployment_id"].startswith("shop-")


async def test_telemetry_example_traces_a_deployment_stream(
    uvicorn_thread: StartUvicornThread,
) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    try:
        server = uvicorn_thread(telemetry_app.build_app(tracer_provider, meter_provider))
        async with SSEClient.connect(server.base_url, "/deploy", method="POST", json={}) as client:
            events = [event async for event in client.events(timeout=5.0)]
        assert events[-1].event == "complete"
        await wait_for_span(spans, "sse.stream")
    finally:
        init_telemetry(container=get_container())  # back to the global (no-op) providers
    finished = {span.name: span for span in spans.get_finished_spans()}
    stream, server_span = finished["sse.stream"], finished["POST /deploy"]
    assert stream.context is not None
    assert server_span.context is not None
    assert stream.context.trace_id == server_span.context.trace_id
    assert stream.attributes is not None
    assert stream.attributes["streaming_mw.stream.close_reason"] == "completed"
    assert stream.attributes["streaming_mw.stream.events_sent"] == len(events)
    publish = finished["stream publish"].context
    assert publish is not None
    assert publish.trace_id == server_span.context.trace_id


async def wait_for_span(spans: InMemorySpanExporter, name: str) -> None:
    for _ in range(200):
        if any(span.name == name for span in spans.get_finished_spans()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {name} span")
