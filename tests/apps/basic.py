"""A tiny Starlette app for harness tests: finite and endless SSE streams, plain JSON.

- ``GET /events?count=N&delay=S`` — a ``: stream start`` comment, then N events
  ``id: <i>`` / ``event: tick`` / ``data: {"i": <i>}``, ``S`` seconds apart.
- ``GET /endless?delay=S`` — ``data: <i>`` events forever; ``Probe`` records
  when the generator starts, gets cancelled and finishes.
- ``GET /json`` — ``{"ok": true, "pid": <pid>, "tag": $BASIC_APP_TAG}``.
- ``POST /echo`` — the JSON request body, returned as is.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request


class Probe:
    """Thread-safe flags a test reads to see what the endless stream did."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.sent = 0

    async def wait(self, flag: threading.Event, timeout: float = 5.0) -> bool:
        """Wait for ``flag`` without blocking the running event loop."""
        return await asyncio.to_thread(flag.wait, timeout)


def _sse(data: str, *, event: str | None = None, event_id: str | None = None) -> str:
    lines = [] if event_id is None else [f"id: {event_id}"]
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {data}")
    return "\n".join(lines) + "\n\n"


async def _finite(count: int, delay: float) -> AsyncIterator[str]:
    yield ": stream start\n\n"
    for i in range(count):
        if i:
            await asyncio.sleep(delay)
        yield _sse(json.dumps({"i": i}), event="tick", event_id=str(i))


async def _endless(probe: Probe, delay: float) -> AsyncIterator[str]:
    probe.started.set()
    try:
        i = 0
        while True:
            yield _sse(str(i))
            probe.sent = i = i + 1
            await asyncio.sleep(delay)
    except asyncio.CancelledError:
        probe.cancelled.set()
        raise
    finally:
        probe.finished.set()


def build_app(probe: Probe | None = None) -> Starlette:
    """A fresh app whose endless stream reports to ``probe``."""
    probe = probe or Probe()

    async def events(request: Request) -> StreamingResponse:
        count = int(request.query_params.get("count", "3"))
        delay = float(request.query_params.get("delay", "0"))
        return StreamingResponse(_finite(count, delay), media_type="text/event-stream")

    async def endless(request: Request) -> StreamingResponse:
        delay = float(request.query_params.get("delay", "0.01"))
        return StreamingResponse(_endless(probe, delay), media_type="text/event-stream")

    async def plain(request: Request) -> JSONResponse:
        tag = os.environ.get("BASIC_APP_TAG")
        return JSONResponse({"ok": True, "pid": os.getpid(), "tag": tag})

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(await request.json())

    routes = [
        Route("/events", events),
        Route("/endless", endless),
        Route("/json", plain),
        Route("/echo", echo, methods=["POST"]),
    ]
    return Starlette(routes=routes)


probe = Probe()
app = build_app(probe)
