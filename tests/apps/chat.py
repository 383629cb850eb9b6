"""A FastAPI chat app using the seed's direct-streaming snippet, for end-to-end lease tests.

- ``GET /chat/stream?user=U&count=N&delay=S`` — holds one of ``U``'s stream leases (the seed's
  ``async with stream_lease(..): return StreamingResponse(..)``) and streams ``N`` ``token``
  events ``S`` seconds apart; ``429`` when ``U`` is at the limit (after waiting ``wait``
  seconds for a slot, if given).
- ``GET /chat/limited?user=U`` — the same, but a `StreamLimitExceeded` is left to the
  middleware (its ``429`` body says which limit was hit).
- ``GET /leases/{user}`` — ``{"active": <leases the limiter counts>, "streams": <open stream
  responses of this process for the user>, "pid": <process id>}``.

In a thread: ``build_app(container, limit=2, ttl=2.0, redis_url=...)`` (a private container).
As a subprocess: ``uvicorn tests.apps.chat:app`` with ``LEASE_LIMIT``, ``LEASE_TTL`` and
``REDIS_URL`` (and optionally ``STREAMING_MODE``, ``LEASE_GLOBAL_LIMIT``, ``LEASE_WAIT`` and
``LEASE_ON_LOST``; ``LEASE_TTL=default`` keeps the configured default) in the environment;
that ``app`` uses the process's default container, which reads the environment at lifespan
startup. It is built on first access, so importing this module for `build_app` leaves the
default container alone.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from streaming_mw import (
    SSE_HEADERS,
    QueueRedisConfig,
    StreamingMiddleware,
    StreamLeaseConfig,
    StreamLimitExceeded,
    init_streaming,
    stream_lease,
)
from streaming_mw.runtime import StreamingContainer, get_container
from streaming_mw.sse import encode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["build_app", "tokens"]


async def tokens(count: int, delay: float) -> AsyncIterator[bytes]:
    """``count`` SSE ``token`` events, the first at once, then one every ``delay`` seconds."""
    for index in range(count):
        if index:
            await asyncio.sleep(delay)
        yield encode(data={"index": index, "token": f"t{index}"}, event="token", id=str(index))


def build_app(
    container: StreamingContainer | None = None,
    *,
    limit: int = 2,
    ttl: float | None = 2.0,
    redis_url: str | None = None,
    global_limit: int | None = None,
    wait: float = 0.0,
    on_lease_lost: Literal["end", "continue"] = "end",
) -> FastAPI:
    """The chat app on ``container`` (the default container if None).

    ``redis_url=None`` leaves the backend to the environment (``REDIS_URL``); without it the
    container runs in memory.
    """
    box = container if container is not None else get_container()
    init_streaming(
        QueueRedisConfig(redis_url) if redis_url is not None else None,
        lease_config=StreamLeaseConfig(
            limit=limit,
            ttl_seconds=StreamLeaseConfig().ttl_seconds if ttl is None else ttl,
            global_limit=global_limit,
            wait_seconds=wait,
            on_lease_lost=on_lease_lost,
        ),
        container=box,
    )
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/chat/stream")
    async def chat(
        user: str, count: int = 10_000, delay: float = 0.05, wait: float | None = None
    ) -> StreamingResponse:
        try:
            async with stream_lease(user, wait=wait) as lease:  # noqa: F841 - the seed's snippet
                return StreamingResponse(tokens(count, delay), headers=dict(SSE_HEADERS))
        except StreamLimitExceeded:
            raise HTTPException(429, "Too many concurrent streams")  # noqa: B904

    @app.get("/chat/limited")
    async def limited(user: str, count: int = 10_000, delay: float = 0.05) -> StreamingResponse:
        async with stream_lease(user):
            return StreamingResponse(tokens(count, delay), headers=dict(SSE_HEADERS))

    @app.get("/leases/{user}")
    async def leases(user: str) -> dict[str, int]:
        active: int = await box.lease_limiter().active(user)
        streams: int = box.stream_registry().count(user)
        return {"active": active, "streams": streams, "pid": os.getpid()}

    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    """``app``: the subprocess app, configured from ``LEASE_LIMIT`` and ``LEASE_TTL``."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        limit = int(os.environ.get("LEASE_LIMIT", "2"))
        ttl_text = os.environ.get("LEASE_TTL", "30")
        global_limit = os.environ.get("LEASE_GLOBAL_LIMIT")
        on_lost: Literal["end", "continue"] = (
            "continue" if os.environ.get("LEASE_ON_LOST") == "continue" else "end"
        )
        _app = build_app(
            limit=limit,
            ttl=None if ttl_text == "default" else float(ttl_text),
            global_limit=None if global_limit is None else int(global_limit),
            wait=float(os.environ.get("LEASE_WAIT", "0")),
            on_lease_lost=on_lost,
        )
    return _app
