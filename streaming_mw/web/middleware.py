"""`StreamingMiddleware`: pure ASGI glue between the app, the container and each stream.

* ``lifespan``: starts the container before the app's startup (and chains SIGTERM/SIGINT
  handlers that start the shutdown drain; from the first request on it also watches the
  server's listening socket, for a server that stops on its own), applies `init_streaming`
  calls made during the app's startup, drains the open streams when the shutdown comes (if
  nothing did it before), and stops the container after the app's shutdown (releasing every
  lease still held).
* ``http``: tracks each request's leases and stream (`RequestStreams`) and releases them
  exactly once when the response ends, the client disconnects (or stops reading past
  ``ChannelConfig.write_timeout``: `WriteWatchdog`) or the app fails. A
  `StreamLimitExceeded` the app does not handle becomes ``429`` with ``Retry-After``, a
  `StreamExistsError` ``409``, a
  `BackendUnavailableError` ``503`` with ``Retry-After: 1`` (`DrainingError` too: a new stream
  while the process drains). A direct stream cut by the drain deadline ends with
  ``error {reason: "shutdown"}`` and ``retry:`` instead of a silent cut.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

import orjson

from ..errors import (
    BackendUnavailableError,
    DrainingError,
    InvalidInputError,
    PayloadTooLargeError,
    StreamExistsError,
    StreamLimitExceeded,
)
from ..runtime.container import current_container, get_container, request_container
from ..runtime.shutdown import install_signal_hooks, start_drain, uninstall_signal_hooks
from ..runtime.startup import apply_pending_options, start_container, stop_container
from .context import current_request
from .deadline import WriteWatchdog
from .tracking import CloseReason, RequestStreams

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .._tasks import TaskSet
    from ..runtime.container import StreamingContainer

__all__ = ["StreamingMiddleware", "invalid_input_response", "limit_exceeded_response"]

log = logging.getLogger("streaming_mw.middleware")


def limit_exceeded_response(exc: StreamLimitExceeded) -> tuple[bytes, str]:
    """The JSON body and the ``Retry-After`` value of the ``429`` answer; ``scope`` says which
    limit was hit (``"user"`` or ``"global"``)."""
    body = orjson.dumps(
        {
            "detail": "Too many concurrent streams",
            "scope": exc.scope,
            "limit": exc.limit,
            "retry_after": exc.retry_after,
        }
    )
    return body, str(math.ceil(exc.retry_after))


def invalid_input_response(exc: InvalidInputError) -> tuple[int, bytes]:
    """The status (``413`` for a payload too large, else ``400``) and JSON body."""
    if isinstance(exc, PayloadTooLargeError):
        body = {"detail": str(exc), "size": exc.size, "limit": exc.limit}
        return 413, orjson.dumps(body)
    return 400, orjson.dumps({"detail": str(exc)})


async def _answer(
    request: RequestStreams, status: int, body: bytes, retry_after: str | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    await request.send({"type": "http.response.start", "status": status, "headers": headers})
    await request.send({"type": "http.response.body", "body": body})


async def _answer_error(request: RequestStreams, exc: Exception) -> CloseReason:
    """Answer an error the app did not handle, before its response started: ``429`` at the
    stream limit, ``400``/``413`` for bad input, ``409`` for a new stream whose id is taken,
    ``503`` while draining or without the backend.
    Anything else is re-raised (the server answers ``500``)."""
    if isinstance(exc, StreamLimitExceeded):
        body, retry_after = limit_exceeded_response(exc)
        await _answer(request, 429, body, retry_after)
        return "limit"
    if isinstance(exc, InvalidInputError):
        status, body = invalid_input_response(exc)
        # The caller's mistake, not ours: one line, no traceback.
        log.info("answering %d: %s: %s", status, type(exc).__name__, exc)
        await _answer(request, status, body)
        return "completed"
    if isinstance(exc, StreamExistsError):
        log.info("answering 409: %s", exc)
        await _answer(request, 409, orjson.dumps({"detail": str(exc)}))
        return "completed"
    if isinstance(exc, DrainingError):
        await _answer(request, 503, orjson.dumps({"detail": f"{exc}, retry shortly"}), "1")
        return "error"
    if isinstance(exc, BackendUnavailableError):
        log.warning("answering 503: %s", exc)
        body = orjson.dumps({"detail": "streaming backend unavailable, retry shortly"})
        await _answer(request, 503, body, "1")
        return "error"
    raise exc


class StreamingMiddleware:
    """``app.add_middleware(StreamingMiddleware)`` is the whole integration.

    ``container`` defaults to the process's default container (`get_container`).
    """

    def __init__(self, app: ASGIApp, *, container: StreamingContainer | None = None) -> None:
        self.app = app
        self._container = container
        self._first_request: Callable[[Sequence[object] | None], None] | None = None
        self.write_watchdog = WriteWatchdog()
        """Ends the streams whose client stopped reading (``ChannelConfig.write_timeout``)."""

    @property
    def container(self) -> StreamingContainer:
        return self._container or get_container()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        # A request is handled here, not in a method awaited from here: that would be one more
        # coroutine object for every open stream to keep alive.
        first_request = self._first_request
        if first_request is not None:  # signal handlers set late; the socket to watch
            self._first_request = None
            first_request(scope.get("server"))
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
            telemetry=container.telemetry(),
            watchdog=self.write_watchdog,
        )
        token = current_request.set(request)
        # The process's container is found without it: one context variable less per request.
        container_token = (
            request_container.set(container) if current_container() is not container else None
        )
        reason: CloseReason = "error"
        try:
            await self.app(scope, request.receive, request.send)
            reason = "completed"
        except asyncio.CancelledError:
            # The drain deadline cut a direct stream, or the server cut the request (e.g. its
            # graceful-shutdown timeout): either way, tell the client before the connection ends.
            reason = "shutdown"
            if not await request.shutdown_cut():
                raise
        except Exception as exc:
            if request.response_started:
                # A stream's generator (the LLM client, an encoder) failed mid-response: end
                # an event stream with an error event and a clean end of body, not a cut.
                if not await request.fail_stream(exc):
                    raise
            else:
                reason = await _answer_error(request, exc)
        finally:
            await request.end(reason)
            if container_token is not None:
                request_container.reset(container_token)
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
            self._first_request = install_signal_hooks(container)
        replay: list[Message] = [first]

        async def receive_() -> Message:
            message = replay.pop() if replay else await receive()
            if message["type"] == "lifespan.shutdown" and started:
                # Most servers get here only once every connection closed: the drain then
                # has nothing left to do, unless no signal started it (the last resort).
                await start_drain(container)
            return message

        async def send_(message: Message) -> None:
            nonlocal started
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                await apply_pending_options(container)
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and started:
                started = False
                uninstall_signal_hooks(container)
                await stop_container(container)
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        finally:
            if started:
                uninstall_signal_hooks(container)
                await stop_container(container)
