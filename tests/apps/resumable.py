"""A FastAPI app with a resumable chat, for the resumable-stream tests.

- ``GET /chat?user=U&count=N&delay=S&grace=G&stream=ID`` — under one of ``U``'s stream leases,
  `resumable_response` over ``N`` tokens ``t1 … tN``, ``S`` seconds apart (the generator never
  waits for a client), ``G`` seconds of resume grace, stream id ``ID``; ``fail_after=K`` makes
  the generator raise instead of yielding token ``K``;
- ``GET /streams/{id}?user=U`` — `stream_response` (follow / resume with ``Last-Event-ID``);
- ``POST /streams/{id}/cancel?user=U`` — `cancel_stream_response`;
- ``GET /observed/{id}`` — what the generator of stream ``id`` saw in this process: tokens
  made, whether it was closed, and how (``GeneratorExit`` / ``CancelledError`` / ``end``);
- ``GET /leases/{user}`` — ``{"active": <leases the limiter counts>, "pid": …}``.

As a subprocess: ``uvicorn tests.apps.resumable:app`` (the default container, from the
environment: ``REDIS_URL``, ``STREAMING_MODE``). In a thread: ``build_app(container)``.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response

from streaming_mw import (
    ChannelConfig,
    StreamingMiddleware,
    StreamLeaseConfig,
    init_streaming,
    resumable_response,
    stream_lease,
    stream_response,
)
from streaming_mw.runtime import StreamingContainer, get_container
from streaming_mw.web import cancel_stream_response

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streaming_mw.config import StreamingMode

__all__ = ["build_app"]


def build_app(
    container: StreamingContainer | None = None,
    *,
    mode: StreamingMode | None = None,
    channel_config: ChannelConfig | None = None,
) -> FastAPI:
    box = container if container is not None else get_container()
    init_streaming(
        lease_config=StreamLeaseConfig(limit=5, ttl_seconds=5.0),
        channel_config=channel_config,
        mode=mode,
        container=box,
    )
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)
    observed: dict[str, dict[str, object]] = {}

    async def tokens(
        stream_id: str, count: int, delay: float, fail_after: int = -1
    ) -> AsyncIterator[str]:
        seen: dict[str, object] = {"produced": 0, "closed": False, "how": None}
        observed[stream_id] = seen
        try:
            for index in range(1, count + 1):
                if delay:
                    await asyncio.sleep(delay)
                if index == fail_after:
                    raise RuntimeError("secret detail: db password is hunter2")
                seen["produced"] = index
                yield f"t{index}"
            seen["how"] = "end"
        except GeneratorExit:
            seen["how"] = "GeneratorExit"
            raise
        except asyncio.CancelledError:
            seen["how"] = "CancelledError"
            raise
        finally:
            seen["closed"] = True

    @app.get("/chat")
    async def chat(
        user: str,
        stream: str,
        count: int = 200,
        delay: float = 0.01,
        grace: float = 30.0,
        fail_after: int = -1,
    ) -> Response:
        source = tokens(stream, count, delay, fail_after)
        async with stream_lease(user):
            return resumable_response(source, user_id=user, resume_grace=grace, stream_id=stream)

    @app.get("/streams/{stream_id}")
    async def follow(stream_id: str, request: Request, user: str) -> Response:
        return stream_response(stream_id, request, user_id=user)

    @app.post("/streams/{stream_id}/cancel")
    async def cancel(stream_id: str, user: str) -> Response:
        return await cancel_stream_response(stream_id, user_id=user)

    @app.get("/observed/{stream_id}")
    async def seen(stream_id: str) -> dict[str, object]:
        return observed.get(stream_id, {})

    @app.get("/leases/{user}")
    async def leases(user: str) -> dict[str, int]:
        active: int = await box.lease_limiter().active(user)
        return {"active": active, "pid": os.getpid()}

    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    """``app``: the subprocess app on the default container."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = build_app()
    return _app
