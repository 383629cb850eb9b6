"""What routes return: `sse_response` (seed pattern 2) and `stream_response` (follow / resume).

``return await sse_response(emitter, worker, config)`` answers at once with the stream and runs
the worker in the background. ``return stream_response(stream_id, request)`` follows an existing
stream, resuming strictly after ``Last-Event-ID`` (header, or ``last_event_id`` query parameter
for clients that cannot set headers).

While the process drains for shutdown, `sse_response` raises `DrainingError` (``503``) and a
follow answers ``200 text/event-stream`` with only a ``retry:`` hint when the client asked for
an event stream (a browser ``EventSource`` ends for good on any other status), else ``503``
with ``Retry-After``. A follow made while the backend is unavailable (Redis down) is answered
the same way, with a jittered ``ChannelConfig.retry_ms``: ``200`` with only ``retry:`` for an
event-stream client (it comes back by itself), the middleware's JSON ``503`` for the others. A
follow whose cursor is already at the stream's terminal event is answered ``204 No Content``,
the signal that makes a browser ``EventSource`` stop reconnecting.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from .._types import validate_stream_id
from ..errors import (
    BackendUnavailableError,
    DrainingError,
    InvalidStreamIdError,
    StreamNotFoundError,
)
from ..jobs.model import JobState
from ..runtime.container import current_container
from ..runtime.drain import drain_retry_ms
from ..runtime.shutdown import is_draining
from ..runtime.startup import ensure_started
from ..sse import encode, sse_headers
from .liveness import producer_liveness
from .responses import EventStreamResponse, json_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request
    from starlette.types import Scope

    from .._types import JSONValue
    from ..channels import AsyncStreamChannel
    from ..config import ChannelConfig
    from ..emitters import SSEEmitter
    from ..jobs.base import JobQueue
    from ..runtime.container import StreamingContainer, StreamingOptions
    from ..runtime.runner import WorkerRunner
    from ..telemetry import Telemetry
    from .tracking import CloseReason

__all__ = ["readiness_response", "sse_response", "stream_response"]

log = logging.getLogger("streaming_mw.routes")

_DEFAULT_RETRY_MS = 2000
"""``ChannelConfig.retry_ms``'s default, for a follow whose options cannot be read."""


def _wants_event_stream(scope: Scope) -> bool:
    accept = b", ".join(v for k, v in scope.get("headers", ()) if k.lower() == b"accept")
    return b"text/event-stream" in accept.lower()


def _retry_only(stream_id: str, comment: str, retry_ms: int) -> Response:
    """``200 text/event-stream`` whose body is one ``retry:`` hint: the client comes back."""
    hint = encode(comment=comment, retry=retry_ms)
    return Response(hint, 200, headers=sse_headers(stream_id), media_type="text/event-stream")


def _outage_retry_ms(container: StreamingContainer) -> int:
    """The configured reconnection delay, jittered by ±50 % (clients spread out)."""
    base = _DEFAULT_RETRY_MS
    try:
        options: StreamingOptions = container.options()
        base = options.channel.retry_ms or base
    except Exception:  # noqa: S110 - the container could not even start: the default delay
        pass
    return random.randint(base // 2, base + base // 2)  # noqa: S311 - jitter, not a secret


async def _channel(container: StreamingContainer) -> tuple[AsyncStreamChannel, ChannelConfig]:
    await ensure_started(container)
    options: StreamingOptions = container.options()
    return container.stream_channel(), options.channel


async def sse_response(
    emitter: SSEEmitter,
    worker_func: Callable[..., Any],
    config: Any = None,
    *,
    cancel_on_disconnect: bool = False,
) -> EventStreamResponse:
    """Start ``worker_func(config, emitter)`` and return the response that streams its events.

    A sync ``worker_func`` runs on the dedicated worker pool, an async one as a task. The
    worker finishes even if the client leaves, unless ``cancel_on_disconnect``. A worker that
    raises ends the stream with ``error``; one that returns without a terminal event gets
    ``complete``.
    """
    container = current_container()
    if is_draining(container):
        raise DrainingError("the server is shutting down")
    channel, channel_config = await _channel(container)
    emitter.bind(channel)
    await emitter.open()
    follower = await channel.follow(emitter.stream_id)
    runner: WorkerRunner = container.worker_runner()
    telemetry: Telemetry = container.telemetry()
    run = runner.start(worker_func, config, emitter, telemetry=telemetry)

    def on_close(reason: CloseReason) -> None:
        if cancel_on_disconnect and reason in ("client_disconnect", "write_timeout"):
            run.cancel()

    return EventStreamResponse(follower, channel_config, on_close=on_close, telemetry=telemetry)


class FollowResponse(EventStreamResponse):
    """Looks the stream up when served: 400 for a malformed id, 404 for an unknown stream and
    (``ChannelConfig.hide_foreign_streams``, the default; else 403) for someone else's, checked
    before anything is subscribed; otherwise the event stream from the client's cursor, relayed
    by this response itself (no second response, and no coroutine around it, stays alive with
    each idle follower)."""

    __slots__ = ("last_event_id", "stream_id", "user_id")

    def __init__(  # the stream's response is set up once it is found (`_resolve`)
        self, stream_id: str, last_event_id: str | None, user_id: str | None
    ) -> None:
        self.stream_id = stream_id
        self.last_event_id = last_event_id
        self.user_id = user_id
        self.status_code = 200
        self.background = None
        self.init_headers({})

    async def _prepare(self, scope: Scope) -> Response | None:
        if is_draining():
            return self._draining_answer(scope)
        try:
            return await self._resolve()
        except BackendUnavailableError as exc:
            if not _wants_event_stream(scope):
                raise  # the middleware's JSON 503 with Retry-After
            log.warning("follow of %s: %s; answering retry:", self.stream_id, exc)
            retry = _outage_retry_ms(current_container())
            return _retry_only(self.stream_id, "backend unavailable: retry", retry)

    def _draining_answer(self, scope: Scope) -> Response:
        if _wants_event_stream(scope):
            comment = "shutting down: resume elsewhere"
            return _retry_only(self.stream_id, comment, drain_retry_ms())
        response = json_error(503, "the server is shutting down, retry shortly")
        response.headers["retry-after"] = "1"
        return response

    async def _resolve(self) -> Response | None:
        """The answer when it is not the stream; None once this response follows it."""
        try:
            validate_stream_id(self.stream_id)
        except InvalidStreamIdError as exc:
            return json_error(400, str(exc))
        container = current_container()
        channel, config = await _channel(container)
        not_found = json_error(404, f"no stream {self.stream_id!r}")
        meta = await channel.meta(self.stream_id)  # the owner first: nothing subscribed for a no
        if meta is None:
            return not_found
        if meta.owner is not None and meta.owner != self.user_id:
            if config.hide_foreign_streams:
                return not_found
            return json_error(403, "this stream belongs to another user")
        try:
            follower = await channel.follow(self.stream_id, self.last_event_id)
        except StreamNotFoundError:
            return not_found
        if follower.finished:  # the client already has the terminal event: tell it to stop
            follower.aclose()
            return Response(status_code=204, headers={"cache-control": "no-store"})
        job_id = follower.job_id
        telemetry: Telemetry = container.telemetry()
        if job_id is None:
            liveness = producer_liveness(channel, self.stream_id) if not meta.ended else None
            # This response becomes the stream's: no second one, no coroutine around it.
            EventStreamResponse.__init__(
                self, follower, config, telemetry=telemetry, liveness=liveness
            )
            return None

        async def no_worker() -> dict[str, JSONValue] | None:
            queue: JobQueue = container.job_queue()
            status = await queue.status(job_id)
            if status is None or status.state is not JobState.QUEUED:
                return None
            return {
                "reason": "no_worker",
                "message": f"no worker picked up job {job_id} within {config.max_idle_time:g}s",
                "job_id": job_id,
            }

        EventStreamResponse.__init__(
            self, follower, config, idle_detail=no_worker, telemetry=telemetry
        )
        return None


def stream_response(
    stream_id: str, request: Request, *, user_id: str | None = None
) -> FollowResponse:
    """Follow ``stream_id`` from the request's ``Last-Event-ID`` (header or query).

    A stream created with an owner is only shown to ``user_id == owner``.
    """
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is None:
        last_event_id = request.query_params.get("last_event_id")
    return FollowResponse(stream_id, last_event_id, user_id)


def readiness_response() -> Response:
    """A readiness probe's answer: ``200 {"ready": true}``, or ``503 {"ready": false}`` once
    the process started draining for shutdown, so a load balancer stops routing to it first::

        @app.get("/ready")
        async def ready() -> Response:
            return readiness_response()
    """
    if is_draining():
        body, status = b'{"ready":false,"draining":true}', 503
    else:
        body, status = b'{"ready":true,"draining":false}', 200
    return Response(body, status, media_type="application/json")
