"""`StreamingMiddleware`: pure ASGI glue between the app, the container and each stream.

* ``lifespan``: starts the container before the app's startup, applies `init_streaming` calls
  made during the app's startup, and stops the container after the app's shutdown (releasing
  every lease still held).
* ``http``: tracks each request's leases and stream (`RequestStreams`) and releases them
  exactly once when the response ends, the client disconnects or the app fails. A
  `StreamLimitExceeded` the app does not handle becomes ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import orjson

from .container import apply_pending_options, get_container, start_container, stop_container
from .context import current_request
from .errors import StreamLimitExceeded
from .tracking import CloseReason, RequestStreams

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ._tasks import TaskSet
    from .container import StreamingContainer

__all__ = ["StreamingMiddleware", "limit_exceeded_response"]


def limit_exceeded_response(exc: StreamLimitExceeded) -> tuple[bytes, str]:
    """The JSON body and the ``Retry-After`` value of the ``429`` answer."""
    body = orjson.dumps(
        {
            "detail": "Too many concurrent streams",
            "limit": exc.limit,
            "retry_after": exc.retry_after,
        }
    )
    return body, str(math.ceil(exc.retry_after))


class StreamingMiddleware:
    """``app.add_middleware(StreamingMiddleware)`` is the whole integration.

    ``container`` defaults to the process's default container (`get_container`).
    """

    def __init__(self, app: ASGIApp, *, container: StreamingContainer | None = None) -> None:
        self.app = app
        self._container = container

    @property
    def container(self) -> StreamingContainer:
        return self._container or get_container()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        container = self.container
        tasks: TaskSet = container.runtime().tasks
        request = RequestStreams(
            scope,
            receive,
            send,
            container=container,
            keeper=container.lease_keeper(),
            registry=container.stream_registry(),
            tasks=tasks,
        )
        token = current_request.set(request)
        reason: CloseReason = "error"
        try:
            await self.app(scope, request.receive, request.send)
            reason = "completed"
        except StreamLimitExceeded as exc:
            if request.response_started:
                raise
            body, retry_after = limit_exceeded_response(exc)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", retry_after.encode()),
            ]
            await request.send({"type": "http.response.start", "status": 429, "headers": headers})
            await request.send({"type": "http.response.body", "body": body})
            reason = "limit"
        finally:
            await request.end(reason)
            current_request.reset(token)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        container = self.container
        first = await receive()
        started = False
        if first["type"] == "lifespan.startup":
            try:
                await start_container(container)
            except Exception as exc:
                # Fail the server's startup (uvicorn exits) instead of serving half-configured.
                await send({"type": "lifespan.startup.failed", "message": f"streaming_mw: {exc}"})
                return
            started = True
        replay: list[Message] = [first]

        async def receive_() -> Message:
            return replay.pop() if replay else await receive()

        async def send_(message: Message) -> None:
            nonlocal started
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                await apply_pending_options(container)
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and started:
                started = False
                await stop_container(container)
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        finally:
            if started:
                await stop_container(container)
