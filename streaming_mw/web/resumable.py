"""Resumable direct streams: `resumable_response`, `cancel_stream`, `cancel_stream_response`.

::

    @app.post("/chat")
    async def chat(req: ChatRequest, user: User = Depends(current_user)):
        async with stream_lease(user.id):
            return resumable_response(tokens(req.prompt), user_id=user.id, resume_grace=30)

The first client reads the generator's events as they are made; the same events, with the same
``<epoch>-<seq>`` ids, go to the stream's history behind it (see `Generation`), so
``stream_response(stream_id, request, user_id=...)`` with ``Last-Event-ID`` resumes the answer
on any process. The response carries the stream id in ``X-Stream-ID`` and in its first event,
``stream {"stream_id": …}`` (an event without an id, not kept in history). The stream lease the
request holds moves to the generation: it is released when the generator ends, not when the
socket closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio
import orjson
from starlette.responses import Response

from .._types import check_user_id, validate_stream_id
from ..channels.producing import producing
from ..emitters import new_stream_id
from ..errors import ConfigurationError, StreamAccessDeniedError, StreamNotFoundError
from ..runtime.container import current_container
from ..runtime.drain import drain_retry_ms
from ..runtime.startup import ensure_started
from ..sse import encode, sse_headers
from .context import current_request
from .generation import Generation
from .responses import json_error
from .sink import DirectSink

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from starlette.types import Receive, Scope, Send

    from ..channels import AsyncStreamChannel
    from ..leases.base import Lease
    from ..runtime.drain import Drain
    from .tracking import CloseReason

__all__ = [
    "ResumableResponse",
    "cancel_stream",
    "cancel_stream_response",
    "resumable_response",
]

log = logging.getLogger("streaming_mw.resumable")

DEFAULT_RESUME_GRACE = 30.0
_DRAINED = "shutdown: resume elsewhere"


class ResumableResponse(Response):
    """The event stream of a resumable direct stream (see the module)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        source: AsyncIterable[object],
        *,
        user_id: str,
        resume_grace: float = DEFAULT_RESUME_GRACE,
        stream_id: str | None = None,
    ) -> None:
        if isinstance(resume_grace, bool) or not resume_grace >= 0:
            raise ConfigurationError(f"resume_grace must be >= 0 seconds, got {resume_grace!r}")
        self.source = source
        self.user_id = check_user_id(str(user_id))
        self.resume_grace = float(resume_grace)
        self.stream_id = new_stream_id() if stream_id is None else validate_stream_id(stream_id)
        self.status_code = 200
        self.background = None
        self.init_headers(sse_headers(self.stream_id))
        self._chosen = stream_id is not None
        self.generation: Generation | None = None
        self._sink: DirectSink | None = None
        self._drain: Drain | None = None
        self.events_sent = 0
        self.close_reason: CloseReason | None = None
        self.resume_cursor: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        generation = self.generation = await self._start()
        sink = self._sink = generation.sink or DirectSink()  # set here: only `detach` takes it
        ended = False
        try:
            announce = orjson.dumps({"stream_id": self.stream_id})
            request = current_request.get()
            if request is not None:
                request.stream_kind = "resumable"
                if generation.shared:  # the drain sends the client elsewhere (see `begin_drain`)
                    request.reporter = self
                    self._drain = current_container().runtime().drain
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if self._drain is not None:
                self._drain.add(self, direct=False)
            if request is not None:  # the response, listed with its leases, has started: from
                for lease in generation.leases:  # now on the generator holds them, not the socket
                    request.forget(lease)
            # one turn of the loop for the generator: an event ready at once (the first token
            # of a cached answer, a replay) leaves with the announcement, in one write
            await asyncio.sleep(0)
            ready = sink.take_ready()
            first = b"event: stream\ndata: " + announce + b"\n\n" + ready
            await send({"type": "http.response.body", "body": first, "more_body": True})
            self.events_sent = 1 + ready.count(b"\n\n")
            version = scope.get("asgi", {}).get("spec_version", "2.0")
            if tuple(int(p) for p in version.split(".")) >= (2, 4):
                ended = await self._relay(send, sink)
            else:
                async with anyio.create_task_group() as group:

                    async def relay_then_stop() -> None:
                        nonlocal ended
                        ended = await self._relay(send, sink)
                        group.cancel_scope.cancel()

                    group.start_soon(relay_then_stop)
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()
        finally:
            if self._drain is not None:
                self._drain.discard(self)
            if not ended:
                generation.detach()

    # --- the shutdown drain (a `DrainTarget`, when the history is shared) -------------------

    def begin_drain(self) -> None:
        """The process drains: after the frames ready now, end with a ``retry:`` hint; the
        client resumes on another process from its last event id, while generation goes on
        here until the drain deadline."""
        if self._sink is not None:
            self._sink.interrupt()

    async def cut_for_shutdown(self) -> None:
        """Nothing to do: the client was sent elsewhere when the drain began."""

    async def _start(self) -> Generation:
        container = current_container()
        await ensure_started(container)
        channel: AsyncStreamChannel = container.stream_channel()
        backend = producing(channel.backend)
        if backend is None:
            raise ConfigurationError("the channel backend cannot record resumable streams")
        request = current_request.get()
        leases: tuple[Lease, ...] = request.leases if request is not None else ()
        generation = Generation(
            self.source,
            stream_id=self.stream_id,
            owner=self.user_id,
            resume_grace=self.resume_grace,
            channel=channel,
            backend=backend,
            container=container,
            leases=leases,
        )
        if self._chosen:  # an id of the caller's: refused (409) before the response starts
            await generation.open()
        generation.start()
        return generation

    async def _relay(self, send: Send, sink: DirectSink) -> bool:
        """Write what the generation hands over; True once the stream has ended."""
        try:
            while (chunk := await sink.take()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if self._drain is not None:
                    self.events_sent += chunk.count(b"\n\n")
                if sink.interrupted:
                    break
            ended = sink.finished and not sink.frames
            tail = b"" if ended else encode(comment=_DRAINED, retry=drain_retry_ms())
            self.close_reason = "completed" if ended else "shutdown"
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except OSError:  # the client is gone (ASGI 2.4)
            return False
        return ended


def resumable_response(
    source: AsyncIterable[object],
    *,
    user_id: str,
    resume_grace: float = DEFAULT_RESUME_GRACE,
    stream_id: str | None = None,
) -> ResumableResponse:
    """Stream ``source`` (an async iterable of `StreamEvent`, ``str`` or ``dict``) to this
    client and record it, so it can be resumed from ``Last-Event-ID`` on any process.

    The stream belongs to ``user_id``. When the client leaves, generation goes on for
    ``resume_grace`` seconds (0: stop at once), longer while someone follows the stream, then
    the generator is closed. It ends with ``complete`` (or the terminal event it yielded), with
    ``error {reason: "internal_error", error_id}`` when it raises, and with
    ``complete {cancelled: true}`` after `cancel_stream`.
    """
    return ResumableResponse(
        source, user_id=user_id, resume_grace=resume_grace, stream_id=stream_id
    )


async def cancel_stream(stream_id: str, *, user_id: str) -> bool:
    """Stop the generator of resumable stream ``stream_id``, wherever it runs.

    The stream ends with ``complete {cancelled: true, reason: "cancelled"}``. Returns False if
    there is nothing to stop (the stream already ended, or it is not a resumable one). Raises
    `StreamNotFoundError` for an unknown stream and `StreamAccessDeniedError` when it belongs
    to another user.
    """
    validate_stream_id(stream_id)
    container = current_container()
    await ensure_started(container)
    channel: AsyncStreamChannel = container.stream_channel()
    meta = await channel.meta(stream_id)
    if meta is None:
        raise StreamNotFoundError(stream_id)
    if meta.owner is not None and meta.owner != user_id:
        raise StreamAccessDeniedError(stream_id)
    if meta.ended:
        return False
    local = container.runtime().producers.get(stream_id)
    if local is not None:
        local.stop("cancelled")
        return True
    backend = producing(channel.backend)
    if backend is None or not await backend.producer_alive(stream_id):
        return False
    await backend.request_cancel(stream_id)
    return True


async def cancel_stream_response(stream_id: str, *, user_id: str) -> Response:
    """`cancel_stream` as a route's answer: ``200 {"cancelled": bool}``, ``404`` for an unknown
    stream, and for another user's ``404`` (``ChannelConfig.hide_foreign_streams``) or
    ``403``."""
    try:
        cancelled = await cancel_stream(stream_id, user_id=user_id)
    except StreamNotFoundError:
        return json_error(404, f"no stream {stream_id!r}")
    except StreamAccessDeniedError:
        if current_container().options().channel.hide_foreign_streams:
            return json_error(404, f"no stream {stream_id!r}")
        return json_error(403, "this stream belongs to another user")
    return Response(orjson.dumps({"cancelled": cancelled}), media_type="application/json")
