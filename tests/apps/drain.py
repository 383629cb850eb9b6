"""A FastAPI app with direct and followed streams, for the shutdown-drain tests.

- ``POST /deploy?count=N&delay=S`` — `sse_response` whose async worker publishes ``N`` ``log``
  events ``S`` seconds apart (the stream id is in ``X-Stream-ID``); with ``sync=true`` a sync
  worker (a thread) does it, and never looks at ``emitter.cancelled``.
- ``GET /streams/{stream_id}`` — follow / resume (`stream_response`).
- ``GET /direct?user=U&count=N&delay=S`` — a direct stream holding one of ``U``'s leases:
  ``N`` ``token`` events ``S`` seconds apart, then ``event: done``.
- ``GET /ready`` — `readiness_response`; ``POST /admin/drain`` — `start_drain`.

Run as ``uvicorn tests.apps.drain:app`` (or under Hypercorn) with ``REDIS_URL`` /
``STREAMING_MODE`` and ``STREAMING_DRAIN_TIMEOUT`` in the environment.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from streaming_mw import (
    DeploymentEmitter,
    StreamingMiddleware,
    get_emitter,
    sse_response,
    stream_lease,
    stream_response,
)
from streaming_mw.runtime import start_drain
from streaming_mw.sse import encode
from streaming_mw.web import readiness_response

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["app"]

app = FastAPI()
app.add_middleware(StreamingMiddleware)


async def publish(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """``count`` log events, ``delay`` seconds apart."""
    for index in range(config["count"]):
        await emitter.log(f"line {index}", index=index)
        await asyncio.sleep(config["delay"])


def publish_sync(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """The same from a worker thread that cannot be cancelled: it sleeps through the drain."""
    for index in range(config["count"]):
        emitter.log(f"line {index}", index=index)
        time.sleep(config["delay"])


@app.post("/deploy")
async def deploy(
    count: int = 1000,
    delay: float = 0.05,
    sync: bool = False,
    emitter: DeploymentEmitter = Depends(get_emitter),
) -> Response:
    worker = publish_sync if sync else publish
    return await sse_response(emitter, worker, {"count": count, "delay": delay})


@app.get("/streams/{stream_id}")
async def follow(stream_id: str, request: Request) -> Response:
    return stream_response(stream_id, request)


async def tokens(count: int, delay: float) -> AsyncIterator[bytes]:
    for index in range(count):
        yield encode(data={"index": index}, event="token", id=str(index))
        await asyncio.sleep(delay)
    yield encode(data={"count": count}, event="done")


@app.get("/direct")
async def direct(user: str, count: int = 10, delay: float = 0.1) -> Response:
    async with stream_lease(user):
        return StreamingResponse(tokens(count, delay), media_type="text/event-stream")


@app.get("/ready")
async def ready() -> Response:
    return readiness_response()


@app.post("/admin/drain")
async def drain() -> dict[str, Any]:
    start_drain()
    return {"draining": True, "pid": os.getpid()}
