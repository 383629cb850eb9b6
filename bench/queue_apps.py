"""The apps the queue-path benchmarks (latency, concurrency, resume) serve with uvicorn.

- ``ours``: FastAPI + `StreamingMiddleware`. ``GET /streams/{stream_id}`` follows a stream with
  `stream_response` (``Last-Event-ID`` header or ``?last_event_id=`` resumes). Redis or memory
  as the environment says (``REDIS_URL`` / ``STREAMING_MODE``). ``POST /emit`` starts a
  publisher inside the server process (the only place a memory-mode stream can be published
  from): ``{"streams": [...], "rate": events per second over all streams, "count": events per
  stream, "create": true}``; each event is ``progress`` with ``{"t": <time.monotonic_ns()>,
  "i": <n>}``. ``POST /create`` creates streams (``{"streams": [...]}``).
- ``relay``: the hand-rolled Redis relay a team writes without a library, the baseline: one
  ``redis.asyncio`` PubSub per request on channel ``relay:<name>``, each message written as
  ``data: <message>``. No history, no resume, no lease.

``time.monotonic_ns()`` is one system-wide clock on Linux, so a client process can subtract it
from its own reading to get the publish → read latency.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from streaming_mw import (
    ChannelConfig,
    SSEEmitter,
    StreamEvent,
    StreamingMiddleware,
    init_streaming,
    sse_response,
    stream_response,
)
from streaming_mw.runtime.container import current_container
from streaming_mw.sse import sse_headers
from streaming_mw.web.responses import EventStreamResponse  # noqa: TC001 (FastAPI reads it)
from streaming_mw.web.routes import FollowResponse  # noqa: TC001 (FastAPI reads the annotation)

from ._harness import paced

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from streaming_mw.channels import AsyncStreamChannel

__all__ = ["floor", "ours", "relay"]

# What a served app should set (docs/configuration.md, freeze_startup_heap); the rest from the
# environment (STREAMING_MODE, REDIS_URL).
init_streaming(channel_config=ChannelConfig(freeze_startup_heap=True))
ours = FastAPI()
ours.add_middleware(StreamingMiddleware)
if os.environ.get("BENCH_HEAP"):  # a diagnostic run of bench.follower_heap

    @ours.get("/heap")
    def _heap(young: str = "", trace: str = "") -> dict[str, Any]:
        from .follower_heap import heap, traced_lines, young_objects

        if trace:
            return traced_lines(trace)
        return young_objects(young) if young else heap()


if os.environ.get("BENCH_HOPS"):  # a diagnostic run of bench.queue_hops
    from . import queue_hops

    queue_hops.install()

    @ours.get("/hops")
    async def _hops() -> dict[str, list[int]]:
        return queue_hops.marks()


_publishers: set[asyncio.Task[None]] = set()


@ours.get("/streams/{stream_id}")
async def _follow(stream_id: str, request: Request) -> FollowResponse:
    return stream_response(stream_id, request)


async def _channel() -> AsyncStreamChannel:
    from streaming_mw.runtime.startup import ensure_started

    container = current_container()
    await ensure_started(container)
    channel: AsyncStreamChannel = container.stream_channel()
    return channel


@ours.post("/create")
async def _create(body: dict[str, Any]) -> dict[str, int]:
    channel = await _channel()
    for stream_id in body["streams"]:
        await channel.create(stream_id)
    return {"created": len(body["streams"])}


async def _publish(
    channel: AsyncStreamChannel, streams: list[str], rate: float, count: int
) -> None:
    async def one(stream_id: str, i: int) -> int:
        return await channel.publish(
            stream_id, StreamEvent("progress", {"t": time.monotonic_ns(), "i": i})
        )

    await paced(streams, rate, count, one)


@ours.post("/emit")
async def _emit(body: dict[str, Any]) -> dict[str, int]:
    channel = await _channel()
    streams = list(body["streams"])
    if body.get("create", True):
        for stream_id in streams:
            await channel.create(stream_id)
    task = asyncio.create_task(_publish(channel, streams, float(body["rate"]), int(body["count"])))
    _publishers.add(task)
    task.add_done_callback(_publishers.discard)
    return {"streams": len(streams)}


# relay: the hand-rolled baseline ---------------------------------------------------------------

_redis: aioredis.Redis | None = None


def _client() -> aioredis.Redis:
    global _redis
    if _redis is None:
        # redis-py's pool stops at 100 connections by default: the relay needs one per stream
        _redis = aioredis.Redis.from_url(os.environ["REDIS_URL"], max_connections=100_000)
    return _redis


async def _relay_events(channel: str) -> AsyncIterator[bytes]:
    pubsub = _client().pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"relay:{channel}")
    try:
        yield b": subscribed\n\n"
        async for message in pubsub.listen():
            if message["type"] == "message":
                yield b"data: " + message["data"] + b"\n\n"
    finally:
        # redis-py < 8.2 leaves aclose unannotated: a typed binding keeps the call checked.
        aclose: Callable[[], Awaitable[None]] = pubsub.aclose
        await aclose()


async def _relay_stream(request: Any) -> StreamingResponse:
    channel = request.path_params["channel"]
    return StreamingResponse(_relay_events(channel), headers=sse_headers())


relay = Starlette(routes=[Route("/relay/{channel}", _relay_stream)])


# the seed's own pattern: a sync worker in a thread of the web process --------------------------
#
# ``GET /deploy-thread/{run}/{j}?events=N&interval=S&streams=M`` (``ours``) answers
# ``sse_response(emitter, worker, config)``; the sync worker runs on the library's worker pool,
# waits for ``POST /go/{run}``, sleeps ``j / M`` of an interval (the streams interleave, as
# independent jobs do), then calls ``emitter.progress(..., t=<time.monotonic_ns()>, i=<n>)``
# every ``S`` seconds against a schedule. ``floor`` does the least the same delivery needs, by
# hand: memory (``/floor/memory/{run}/{j}``) a thread that hands each event to the loop with
# ``call_soon_threadsafe`` into an ``asyncio.Queue`` read by a ``StreamingResponse``; Redis
# (``/floor/redis/{run}/{j}``) a thread that ``PUBLISH``es with a sync client while the route
# reads one ``redis.asyncio`` Pub/Sub subscription. Both send ``: subscribed`` once listening.

_GO_WAIT = 120.0
_starts: dict[str, threading.Event] = {}


def _start_of(run: str) -> threading.Event:
    return _starts.setdefault(run, threading.Event())


def _paced_events(
    run: str, j: int, query: Mapping[str, str], publish: Callable[[int], object]
) -> None:
    """Wait for ``/go``, then call ``publish(i)`` for each event, on schedule (a thread)."""
    events, interval = int(query["events"]), float(query["interval"])
    offset = interval * j / max(1, int(query["streams"]))
    if not _start_of(run).wait(_GO_WAIT):
        raise RuntimeError(f"run {run}: no /go within {_GO_WAIT:.0f} s")
    began = time.monotonic() + offset
    for i in range(events):
        pause = began + i * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        publish(i)


def _sync_worker(config: dict[str, Any], emitter: SSEEmitter) -> None:
    def publish(i: int) -> None:
        emitter.progress(i * 100 / config["events"], t=time.monotonic_ns(), i=i)

    _paced_events(config["run"], config["j"], config["query"], publish)


@ours.get("/deploy-thread/{run}/{j}")
async def _work(run: str, j: int, request: Request) -> EventStreamResponse:
    query = dict(request.query_params)
    config = {"run": run, "j": j, "query": query, "events": int(query["events"])}
    return await sse_response(SSEEmitter(), _sync_worker, config)


@ours.post("/go/{run}")
async def _go(run: str) -> dict[str, bool]:
    _start_of(run).set()
    return {"started": True}


_sync_redis: redis.Redis | None = None


def _sync_client() -> redis.Redis:
    global _sync_redis
    if _sync_redis is None:
        _sync_redis = redis.Redis.from_url(os.environ["REDIS_URL"], max_connections=1000)
    return _sync_redis


def _frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _event_bytes(i: int) -> bytes:
    return orjson.dumps({"t": time.monotonic_ns(), "i": i})


async def _floor_memory(run: str, j: int, query: Mapping[str, str]) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[bytes | None] = asyncio.Queue()

    def thread() -> None:
        try:
            _paced_events(
                run,
                j,
                query,
                lambda i: loop.call_soon_threadsafe(items.put_nowait, _event_bytes(i)),
            )
        finally:
            loop.call_soon_threadsafe(items.put_nowait, None)

    threading.Thread(target=thread, daemon=True).start()
    yield b": subscribed\n\n"
    while (item := await items.get()) is not None:
        yield _frame(item)


async def _floor_redis(run: str, j: int, query: Mapping[str, str]) -> AsyncIterator[bytes]:
    channel = f"floor:{run}:{j}"
    pubsub = _client().pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    client = _sync_client()

    def thread() -> None:
        try:
            _paced_events(run, j, query, lambda i: client.publish(channel, _event_bytes(i)))
        finally:
            client.publish(channel, b"end")

    threading.Thread(target=thread, daemon=True).start()
    try:
        yield b": subscribed\n\n"
        async for message in pubsub.listen():
            if message["type"] == "message":
                if message["data"] == b"end":
                    break
                yield _frame(message["data"])
    finally:
        aclose: Callable[[], Awaitable[None]] = pubsub.aclose
        await aclose()


async def _floor_stream(request: Any) -> StreamingResponse:
    params = request.path_params
    run, j, mode = params["run"], int(params["j"]), params["mode"]
    relay = _floor_memory if mode == "memory" else _floor_redis
    return StreamingResponse(relay(run, j, request.query_params), headers=sse_headers())


async def _floor_go(request: Any) -> Response:
    _start_of(request.path_params["run"]).set()
    return Response(b"{}", media_type="application/json")


floor = Starlette(
    routes=[
        Route("/floor/{mode}/{run}/{j}", _floor_stream),
        Route("/go/{run}", _floor_go, methods=["POST"]),
    ]
)

if os.environ.get("BENCH_HOPS"):

    async def _floor_hops(request: Any) -> Response:
        return Response(orjson.dumps(queue_hops.marks()), media_type="application/json")

    floor.add_route("/hops", _floor_hops)
