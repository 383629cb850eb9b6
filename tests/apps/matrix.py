"""The core streaming cases, for the server matrix (uvicorn, Hypercorn, Granian, gunicorn).

- ``GET /direct?user=U&delay=S`` — a direct stream holding one of ``U``'s leases (2 per user):
  a ``token`` event every ``S`` seconds, until the client leaves; a third is ``429``.
- ``GET /burst?user=U&n=N&size=B`` — a direct stream of ``N`` ``token`` events of ``B`` bytes of
  padding each, sent without a pause (what `coalesce_writes` batches), then its end.
- ``GET /leases/{user}`` — ``{"active": n}``, ``U``'s leases held right now.
- ``POST /deploy?count=N&delay=S`` — `sse_response` of ``N`` ``log`` events ``S`` s apart.
- ``GET /streams/{stream_id}`` — follow / resume (`stream_response`).

Keep-alive pings come after 0.3 s of silence. Run with ``REDIS_URL`` and
``STREAMING_MODE=redis``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from streaming_mw import (
    ChannelConfig,
    DeploymentEmitter,
    StreamingMiddleware,
    StreamLeaseConfig,
    get_emitter,
    init_streaming,
    sse_response,
    stream_lease,
    stream_response,
)
from streaming_mw.runtime import get_container
from streaming_mw.sse import encode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import Any

    from streaming_mw.leases import LeaseLimiter

__all__ = ["app"]

init_streaming(
    channel_config=ChannelConfig(ping_interval=0.3),
    lease_config=StreamLeaseConfig(limit=2, ttl_seconds=60),
)
app = FastAPI()
app.add_middleware(StreamingMiddleware)


async def tokens(delay: float) -> AsyncIterator[bytes]:
    index = 0
    while True:
        yield encode(data={"index": index}, event="token")
        index += 1
        await asyncio.sleep(delay)


@app.get("/direct")
async def direct(user: str, delay: float = 0.05) -> Response:
    async with stream_lease(user):
        return StreamingResponse(tokens(delay), media_type="text/event-stream")


async def burst_events(count: int, size: int) -> AsyncIterator[bytes]:
    pad = "x" * size
    for index in range(count):
        yield encode(data={"index": index, "pad": pad}, event="token", id=str(index))


@app.get("/burst")
async def burst(user: str, n: int, size: int = 0) -> Response:
    async with stream_lease(user):
        return StreamingResponse(burst_events(n, size), media_type="text/event-stream")


@app.get("/leases/{user}")
async def leases(user: str) -> dict[str, int]:
    limiter: LeaseLimiter = get_container().lease_limiter()
    return {"active": await limiter.active(user)}


async def publish(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    for index in range(config["count"]):
        await emitter.log(f"line {index}", index=index)
        await asyncio.sleep(config["delay"])


@app.post("/deploy")
async def deploy(
    count: int = 20, delay: float = 0.05, emitter: DeploymentEmitter = Depends(get_emitter)
) -> Response:
    return await sse_response(emitter, publish, {"count": count, "delay": delay})


@app.get("/streams/{stream_id}")
async def follow(stream_id: str, request: Request) -> Response:
    return stream_response(stream_id, request)
