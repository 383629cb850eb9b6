"""`sse_response`, `stream_response` and `EventStreamResponse` driven by the raw ASGI harness:
worker supervision and the dedicated pool, headers, keep-alive, idle timeout, disconnects under
ASGI 2.3 and 2.4, batching, slow consumers and ``cancel_on_disconnect``."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import orjson
import pytest
from fastapi import Depends, FastAPI

from streaming_mw import (
    BackendUnavailableError,
    ChannelConfig,
    DeploymentEmitter,
    EventStreamResponse,
    SSEEmitter,
    StreamingMiddleware,
    get_emitter,
    init_streaming,
    sse_response,
)
from streaming_mw._types import validate_stream_id
from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend, StreamState
from streaming_mw.runtime import StreamingContainer
from streaming_mw.sse import PING, SSEComment, SSEEvent, SSEParser
from tests.apps.deploy import build_app
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.leases import eventually

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from streaming_mw.web.tracking import CloseReason
    from tests.helpers.asgi import AsgiResponse, SpecVersion

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])
JSON = {"content-type": "application/json"}
Worker: TypeAlias = "Callable[[Any, DeploymentEmitter], Any]"


def memory_container(**options: Any) -> StreamingContainer:
    container = StreamingContainer()
    init_streaming(channel_config=ChannelConfig(**options), mode="memory", container=container)
    return container


def data(event: SSEEvent) -> Any:
    return orjson.loads(event.data)


def seq(event: SSEEvent) -> int:
    return -1 if event.id is None else int(event.id.rpartition("-")[2])


async def until_terminal(response: AsgiResponse) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    while not events or events[-1].event not in ("complete", "error"):
        events.append(await response.read_event())
    return events


async def wait_state(container: StreamingContainer, stream_id: str, state: StreamState) -> None:
    channel: AsyncStreamChannel = container.stream_channel()

    async def reached() -> bool:
        meta = await channel.meta(stream_id)
        return meta is not None and meta.state is state

    await eventually(reached)


def worker_app(
    container: StreamingContainer, worker: Worker, config: Any = None, *, cancel: bool = False
) -> FastAPI:
    """``POST /run`` answers ``sse_response(emitter, worker, config)``."""
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.post("/run")
    async def run(emitter: DeploymentEmitter = Depends(get_emitter)) -> Any:
        return await sse_response(emitter, worker, config, cancel_on_disconnect=cancel)

    return app


class FollowApp:
    """Raw ASGI app on a private memory channel: each request follows ``emitter``'s stream from
    ``Last-Event-ID``; keeps each `EventStreamResponse` and what its ``on_close`` was told."""

    def __init__(self, config: ChannelConfig) -> None:
        self.backend = MemoryChannelBackend(config)
        self.channel = AsyncStreamChannel(self.backend, config)
        self.emitter = SSEEmitter(self.channel)
        self.responses: list[EventStreamResponse] = []
        self.reasons: list[CloseReason] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cursor = dict(scope["headers"]).get(b"last-event-id", b"").decode() or None
        follower = await self.channel.follow(self.emitter.stream_id, cursor)
        response = EventStreamResponse(follower, self.channel.config, on_close=self.reasons.append)
        self.responses.append(response)
        await response(scope, receive, send)


def gated(app: ASGIApp, gate: asyncio.Event, blocked: asyncio.Event) -> ASGIApp:
    """``app`` behind a client that stops reading: every body ``send`` waits for ``gate``."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def stuck_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                blocked.set()
                await gate.wait()
            await send(message)

        await app(scope, receive, stuck_send)

    return wrapped


# --- WorkerRunner through sse_response -------------------------------------------------------


async def test_sync_worker_runs_on_the_dedicated_pool_and_gets_complete() -> None:
    threads: list[str] = []

    def worker(config: Any, emitter: DeploymentEmitter) -> None:
        threads.append(threading.current_thread().name)
        emitter.log(f"job {config['job']}")

    app = worker_app(memory_container(), worker, {"job": 1})
    async with lifespan(app), AsgiClient(app).stream("POST", "/run") as response:
        events = await until_terminal(response)
    assert [(e.event, data(e)) for e in events] == [
        ("log", {"message": "job 1", "level": "info"}),
        ("complete", {"success": True}),
    ]
    assert len(threads) == 1
    assert threads[0].startswith("streaming_mw-worker"), threads


def sync_failure(config: Any, emitter: DeploymentEmitter) -> None:
    raise ValueError("kaput-sync")


async def async_failure(config: Any, emitter: DeploymentEmitter) -> None:
    raise ValueError("kaput-async")


@pytest.mark.parametrize("worker", [sync_failure, async_failure], ids=["sync", "async"])
async def test_failing_worker_ends_the_stream_with_error(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    app = worker_app(memory_container(), worker)
    async with lifespan(app), AsgiClient(app).stream("POST", "/run") as response:
        events = await until_terminal(response)
        assert await response.read_all() == b""
    assert [e.event for e in events] == ["error"]
    error = data(events[0])
    # the client gets an id to quote; the text (which may be sensitive) stays in the log
    assert error == {
        "message": "worker failed",
        "reason": "internal_error",
        "error_id": error["error_id"],
    }
    assert "kaput" not in events[0].data
    [record] = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert record.exc_info is not None
    assert "kaput-" in str(record.exc_info[1])


async def test_expose_errors_names_the_exception_for_development() -> None:
    app = worker_app(memory_container(expose_errors=True), sync_failure)
    async with lifespan(app), AsgiClient(app).stream("POST", "/run") as response:
        [event] = await until_terminal(response)
    error = data(event)
    assert (error["type"], error["reason"]) == ("ValueError", "internal_error")
    assert "kaput-" in error["detail"]


async def test_sync_worker_pool_is_bounded_by_worker_threads() -> None:
    lock, release = threading.Lock(), threading.Event()
    running, peak = [0], [0]

    def worker(config: Any, emitter: DeploymentEmitter) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            release.wait(10)
        finally:
            with lock:
                running[0] -= 1

    async def two_running() -> bool:
        return running[0] == 2

    app = worker_app(memory_container(worker_threads=2), worker)
    client = AsgiClient(app)
    async with lifespan(app), AsyncExitStack() as stack:
        stack.callback(release.set)  # never leave threads waiting, whatever fails
        responses = [
            await stack.enter_async_context(client.stream("POST", "/run")) for _ in range(5)
        ]
        await eventually(two_running)
        await asyncio.sleep(0.3)  # give a third thread every chance to start
        assert (running[0], peak[0]) == (2, 2)
        release.set()
        for response in responses:
            assert [e.event for e in await until_terminal(response)] == ["complete"]
    assert peak[0] == 2


async def test_a_refused_terminal_event_still_ends_the_stream() -> None:
    # The worker's `complete` is too large and raises; WorkerRunner must still end the stream
    # (DESIGN §5: nothing hangs) with an `error` naming the failure, not leave it running.
    async def worker(config: Any, emitter: DeploymentEmitter) -> None:
        await emitter.complete(blob="x" * 2000)

    container = memory_container(max_event_bytes=1024, max_idle_time=2)
    app = worker_app(container, worker)
    async with lifespan(app), AsgiClient(app).stream("POST", "/run") as response:
        events = await until_terminal(response)
        assert [e.event for e in events] == ["error"]
        assert data(events[0]).get("reason") == "internal_error", data(events[0])
        await wait_state(container, str(response.header("x-stream-id")), StreamState.ERROR)


# --- EventStreamResponse ---------------------------------------------------------------------


@SPECS
async def test_headers_and_the_end_right_after_the_terminal_event(spec: SpecVersion) -> None:
    app = build_app(memory_container())
    client = AsgiClient(app, spec_version=spec)
    async with lifespan(app):
        async with client.stream("POST", "/deploy/async", headers=JSON, body=b'{"steps": 2}') as r:
            events = await until_terminal(r)
            assert await r.read_all(timeout=1) == b""
            await r.wait_finished(timeout=1)
        stream_id = validate_stream_id(str(r.header("x-stream-id")))
        async with client.stream("GET", f"/streams/{stream_id}") as again:
            replay = await until_terminal(again)
    for response in (r, again):
        assert response.status == 200
        assert str(response.header("content-type")).split(";")[0] == "text/event-stream"
        assert response.header("cache-control") == "no-store"
        assert response.header("x-accel-buffering") == "no"
        assert response.header("x-stream-id") == stream_id
        assert response.header("connection") is None
        assert response.header("content-length") is None
    assert [seq(e) for e in events] == list(range(1, 7))
    assert data(events[-1]) == {"success": True, "deployment_id": "abc123"}
    assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in events]


@SPECS
async def test_keepalive_pings_then_idle_timeout(spec: SpecVersion) -> None:
    container = memory_container(ping_interval=0.1, max_idle_time=0.5)
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("POST", "/deploy/silent", headers=JSON, body=b'{"sleep": 1}') as r:
            started = time.monotonic()
            assert await r.read_chunk(timeout=1) == b"retry: 2000\n\n" + PING  # retry_ms first
            for _ in range(2):
                assert await r.read_chunk(timeout=1) == PING
            assert time.monotonic() - started >= 0.2  # each ping follows 0.1 s of silence
            final = await r.read_event(timeout=2)
            assert (final.event, data(final)["reason"]) == ("error", "idle_timeout")
            assert await r.read_all() == b""
            await r.wait_finished(timeout=1)
        # The worker itself is not cut off: it still ends its stream when it returns.
        await wait_state(container, str(r.header("x-stream-id")), StreamState.DONE)


@SPECS
async def test_client_disconnect_ends_the_response_and_its_subscription(
    spec: SpecVersion,
) -> None:
    app = FollowApp(ChannelConfig(ping_interval=0.1, max_idle_time=30))
    emitter = app.emitter
    await emitter.open()
    # White-box: the memory backend's per-stream subscriber set shows who still follows.
    subscribers = app.backend._streams[emitter.stream_id].subscribers
    async with AsgiClient(app, spec_version=spec).stream("GET", "/") as r:
        await emitter.log("first")
        assert (await r.read_event()).event == "log"
        assert len(subscribers) == 1
        r.disconnect()
        await r.wait_finished(timeout=2)
        assert (r.cancelled, r.exception) == (False, None)
    assert not subscribers
    assert app.responses[0].close_reason == "client_disconnect"
    assert app.reasons == ["client_disconnect"]
    assert (await emitter.log("nobody listens")).id == f"{emitter.epoch}-2"


async def test_asgi_2_3_the_follow_watches_receive_itself_no_second_reader() -> None:
    # Under ASGI 2.3 the response's own watcher waits for `http.disconnect`: the middleware
    # starts no pump of its own for it (a task and a queue more per idle follower).
    container = memory_container(ping_interval=0.1, max_idle_time=30)
    app = build_app(container)
    registry = container.stream_registry()

    async def closed() -> bool:
        return registry.count() == 0

    async with lifespan(app):
        emitter = SSEEmitter(container.stream_channel())
        await emitter.open()
        path = f"/streams/{emitter.stream_id}"
        async with AsgiClient(app, spec_version="2.3").stream("GET", path) as r:
            await emitter.log("first")
            assert (await r.read_event()).event == "log"
            assert "streaming_mw.disconnect" not in {t.get_name() for t in asyncio.all_tasks()}
            assert registry.count() == 1
            r.disconnect()
            await r.wait_finished(timeout=2)
            assert (r.cancelled, r.exception) == (False, None)
        await eventually(closed)


async def test_asgi_2_3_a_failing_receive_ends_the_follow_with_error() -> None:
    app = FollowApp(ChannelConfig(ping_interval=0.1, max_idle_time=30))
    emitter = app.emitter
    await emitter.open()
    subscribers = app.backend._streams[emitter.stream_id].subscribers
    broken = asyncio.Event()
    failure = RuntimeError("the server's receive failed")

    async def failing_receive_app(scope: Scope, receive: Receive, send: Send) -> None:
        first = True

        async def receive_() -> Message:
            nonlocal first
            if first:  # the request body
                first = False
                return await receive()
            await broken.wait()
            raise failure

        await app(scope, receive_, send)

    async with AsgiClient(failing_receive_app, spec_version="2.3").stream("GET", "/") as r:
        await emitter.log("first")
        assert (await r.read_event()).event == "log"
        assert len(subscribers) == 1
        broken.set()
        await r.wait_finished(timeout=2)
        assert r.exception is failure
    assert not subscribers
    assert app.responses[0].close_reason == "error"
    assert app.reasons == ["error"]


@SPECS
async def test_ready_events_are_batched_into_one_chunk(spec: SpecVersion) -> None:
    container = memory_container()
    app = build_app(container)
    async with lifespan(app):
        emitter = SSEEmitter(container.stream_channel())
        await emitter.open()
        for i in range(50):
            emitter.log(f"event {i}")
        await emitter.drain()
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", f"/streams/{emitter.stream_id}") as r:
            first = await r.read_chunk()
            await emitter.complete()
            rest = await until_terminal(r)
    batch = [item for item in SSEParser().feed(first) if isinstance(item, SSEEvent)]
    assert [seq(e) for e in batch] == list(range(1, 51))
    assert [e.event for e in rest] == ["complete"]


@SPECS
async def test_slow_consumer_is_cut_off_and_resumes_without_loss(spec: SpecVersion) -> None:
    app = FollowApp(ChannelConfig(subscriber_queue_size=8, ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    gate, blocked = asyncio.Event(), asyncio.Event()
    slow_client = AsgiClient(gated(app, gate, blocked), spec_version=spec)
    async with (
        slow_client.stream("GET", "/") as slow,
        AsgiClient(app, spec_version=spec).stream("GET", "/") as fast,
    ):
        slow_response, fast_response = app.responses
        await emitter.log("0")
        async with asyncio.timeout(5):
            await blocked.wait()  # the slow client's first write is stuck
        async with asyncio.timeout(10):  # the stuck client never holds the publisher up
            for i in range(1, 1000):
                await emitter.log(str(i))
                await asyncio.sleep(0)
            await emitter.complete()
        assert not gate.is_set()
        fast_events = await until_terminal(fast)
        gate.set()
        body = await slow.read_all()
        await slow.wait_finished()
    assert [seq(e) for e in fast_events] == list(range(1, 1002))
    assert [data(e)["message"] for e in fast_events[:-1]] == [str(i) for i in range(1000)]
    assert fast_response.close_reason == "completed"

    parser = SSEParser()
    items = parser.feed(body)
    got = [item for item in items if isinstance(item, SSEEvent)]
    comments = [item.text for item in items if isinstance(item, SSEComment)]
    assert any("slow consumer" in text for text in comments), comments
    assert parser.retry is not None
    assert slow_response.close_reason == "limit"
    assert sorted(app.reasons) == ["completed", "limit"]
    assert got
    assert got[-1].event not in ("complete", "error")

    resume = AsgiClient(app, spec_version=spec)
    async with resume.stream("GET", "/", headers={"last-event-id": parser.last_event_id}) as r:
        rest = await until_terminal(r)
    assert [seq(e) for e in got + rest] == list(range(1, 1002))


class FlakyReads(MemoryChannelBackend):
    """A memory backend whose next history read fails as Redis would when unavailable."""

    fail_next_read = False

    async def read(self, stream_id: str, after_seq: int, limit: int) -> Any:
        if self.fail_next_read:
            self.fail_next_read = False
            raise BackendUnavailableError("Redis unavailable during history read")
        return await super().read(stream_id, after_seq, limit)


@SPECS
async def test_backend_failure_mid_stream_ends_with_retry_and_resumes(spec: SpecVersion) -> None:
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    backend = FlakyReads(app.channel.config)
    app.backend, app.channel = backend, AsyncStreamChannel(backend, app.channel.config)
    app.emitter = SSEEmitter(app.channel)
    emitter = app.emitter
    await emitter.open()
    for i in range(3):
        await emitter.log(str(i))
    backend.fail_next_read = True
    async with AsgiClient(app, spec_version=spec).stream("GET", "/") as r:
        assert r.status == 200
        body = await r.read_all()
        await r.wait_finished()
    parser = SSEParser()
    items = parser.feed(body)
    assert [item.text for item in items if isinstance(item, SSEComment)] == [
        "backend unavailable: resume"
    ]
    assert not [item for item in items if isinstance(item, SSEEvent)]  # no terminal `error`
    assert parser.retry is not None
    assert app.reasons == ["error"]
    await emitter.complete()
    async with AsgiClient(app, spec_version=spec).stream("GET", "/") as r:
        events = await until_terminal(r)
    assert [e.event for e in events] == ["log", "log", "log", "complete"]


# --- cancel_on_disconnect --------------------------------------------------------------------


async def async_cancellable(told: threading.Event, emitter: DeploymentEmitter) -> None:
    await emitter.log("started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        told.set()
        raise


def sync_cancellable(told: threading.Event, emitter: DeploymentEmitter) -> None:
    emitter.log("started")
    deadline = time.monotonic() + 10
    while not emitter.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    if emitter.cancelled:
        told.set()


@SPECS
@pytest.mark.parametrize("worker", [async_cancellable, sync_cancellable], ids=["async", "sync"])
async def test_cancel_on_disconnect_stops_the_worker(spec: SpecVersion, worker: Worker) -> None:
    # async: the worker task is cancelled; sync: the thread sees `emitter.cancelled`.
    told = threading.Event()

    async def noticed() -> bool:
        return told.is_set()

    container = memory_container(ping_interval=0.1)
    app = worker_app(container, worker, told, cancel=True)
    async with lifespan(app), AsgiClient(app, spec_version=spec).stream("POST", "/run") as r:
        assert (await r.read_event()).event == "log"
        r.disconnect()
        await r.wait_finished(timeout=2)
        await eventually(noticed)
        stream_id = str(r.header("x-stream-id"))
        await wait_state(container, stream_id, StreamState.CANCELLED)
        follower = await container.stream_channel().follow(stream_id)
        events = [await follower.next(0), await follower.next(0), await follower.next(0)]
        follower.aclose()
    assert [(e.type, cast("dict[str, Any]", e.data).get("reason")) for e in events if e] == [
        ("log", None),
        ("error", "cancelled"),
    ]
