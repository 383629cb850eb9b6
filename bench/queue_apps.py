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
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from streaming_mw import StreamEvent, StreamingMiddleware, stream_response
from streaming_mw.runtime.container import current_container
from streaming_mw.sse import sse_headers
from streaming_mw.web.routes import FollowResponse  # noqa: TC001 (FastAPI reads the annotation)

from ._harness import paced

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from streaming_mw.channels import AsyncStreamChannel

__all__ = ["ours", "relay"]

ours = FastAPI()
ours.add_middleware(StreamingMiddleware)
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
