"""Running an app with its lifespan, in memory mode, behind an ``httpx.AsyncClient``."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from asgi_lifespan import LifespanManager

from ..runtime import get_container, init_streaming

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..config import StreamingMode
    from ..runtime import StreamingContainer
    from ._asgi import ASGIApp

__all__ = ["streaming_client"]


@asynccontextmanager
async def streaming_client(
    app: ASGIApp,
    *,
    mode: StreamingMode | None = "memory",
    base_url: str = "http://testserver",
    container: StreamingContainer | None = None,
    wait: float = 10.0,
) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app`` (its lifespan: `StreamingMiddleware` starts the container), yield a client
    that calls it in memory, and shut it down.

    ``mode`` is set on the container for the duration (``"memory"`` by default: no Redis, no
    fallback warning); ``None`` leaves it to ``STREAMING_MODE`` / ``REDIS_URL``. ``wait``
    bounds the startup, the shutdown and each request, in seconds.

    ``httpx.ASGITransport`` hands over a response body only when the app has finished it, so
    this suits streams that end (a worker that completes, a stream past its terminal event).
    An endless stream (one that only pings) never returns here: run a real server instead
    (`streaming_mw.testing.server.serve_in_thread`).
    """
    container = container or get_container()
    saved = container.options()
    if mode is not None:
        init_streaming(mode=mode, container=container)
    try:
        async with LifespanManager(app, startup_timeout=wait, shutdown_timeout=wait) as mgr:
            transport = httpx.ASGITransport(app=mgr.app)
            async with httpx.AsyncClient(
                transport=transport, base_url=base_url, timeout=wait
            ) as client:
                yield client
    finally:
        container.options.set_provides(saved)
