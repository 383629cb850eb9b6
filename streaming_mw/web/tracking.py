"""`RequestStreams`: what one HTTP request holds, and the ASGI wrappers that see it end.

A lease taken while a request is handled belongs to that request, released exactly once: when
the response body ends, the client disconnects, or the app fails, whichever comes first.

Disconnects are seen whatever ASGI spec version the server speaks. 2.3 servers deliver
``http.disconnect`` through ``receive``: once the response has started, a pump reads it for the
app (handing it every message unchanged), so the disconnect is seen even when the app never
listens. 2.4 servers may only fail ``send`` with an ``OSError``; the wrapped ``send`` sees it.

A direct stream (an event stream without a `StreamReporter`: not an `EventStreamResponse`, nor
a resumable one on Redis) is a `DrainTarget`: past the drain deadline its request task is
cancelled and the middleware ends the body with ``error {reason: "shutdown"}`` and ``retry:``
(`shutdown_cut`); with ``on_lease_lost="end"`` a lost lease cuts an event stream the same way,
with ``error {reason: "lease_lost"}`` (`lease_lost`). A stream whose send waited past
``write_timeout`` (its client stopped reading, see `deadline`) is cut without a last frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .._failure import new_error_id
from ..telemetry import ATTR_ERROR_ID
from .coalesce import WriteBatch
from .frames import CloseReason, CutReason, cut_frame, failure_frame, is_event_stream
from .pump import pump_receive
from .release import release_leases, shown
from .slots import RequestSlots
from .spans import close_span, open_span

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from starlette.types import Message, Receive, Scope, Send

    from .._tasks import TaskSet
    from ..leases.base import Lease
    from ..runtime.container import StreamingContainer, StreamingOptions
    from ..runtime.keeper import LeaseKeeper
    from ..runtime.registry import StreamRegistry
    from ..telemetry import Telemetry
    from .deadline import WriteWatchdog
    from .frames import StreamReporter

__all__ = ["CloseReason", "RequestStreams"]

log = logging.getLogger("streaming_mw.middleware")

_COLON = ord(":")
_now = time.time
_LAST_FRAME_TIMEOUT = 1.0


class RequestStreams(RequestSlots):
    """The leases and the stream entry of one HTTP request handled by the middleware."""

    __slots__ = ()

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        container: StreamingContainer,
        keeper: LeaseKeeper,
        registry: StreamRegistry,
        tasks: TaskSet,
        telemetry: Telemetry,
        watchdog: WriteWatchdog,
    ) -> None:
        self.telemetry = telemetry
        self._watchdog = watchdog
        self.sending_since = 0.0  # when the pending send began (the write deadline's clock)
        self.container = container
        self._scope = scope
        self.server_receive = receive  # the server's own (read by a response that watches it)
        self._send = send
        self._keeper = keeper
        self._registry = registry
        self._tasks = tasks
        self._leases: list[Lease] | tuple[()] = ()  # a list once one is adopted
        self._user: str | None = None  # of the first lease taken: names the stream's user
        self._stream_key: int | None = None
        self._in_flight = 0
        self._inbox: asyncio.Queue[Message] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ended = False
        self._end: asyncio.Task[None] | None = None
        self.response_started = False
        self.reads_receive = False  # until the disconnect (ASGI 2.3 `EventStreamResponse`)
        self.close_reason: CloseReason | None = None
        self._span: Span | None = None
        self._stream_id: str | None = None
        self.bytes_sent = 0
        self.frames_sent = 0
        self._comments = 0
        self._last_event_at: float | None = None
        self.reporter: StreamReporter | None = None
        """The stream response, when it knows better than the bytes (exact events, cursor)."""
        self.stream_kind = "direct"  # or "queue", or set by the response ("resumable")
        self._task = asyncio.current_task()
        self._opened = time.monotonic()
        self._event_stream = False
        self._cut: CutReason | None = None
        self._direct = False
        self._gone: asyncio.Event | None = None  # made when watched (`watch_disconnect`)
        self._batch: WriteBatch | None = None  # a direct stream's chunks of this loop turn

    @property
    def ended(self) -> bool:
        """The response is over: its leases are released or being released."""
        return self._ended

    @property
    def disconnected(self) -> bool:  # the client went away before the response ended
        return self.close_reason == "client_disconnect"

    @property
    def leases(self) -> tuple[Lease, ...]:
        """Leases this request holds."""
        return tuple(self._leases)

    def adopt(self, lease: Lease) -> bool:
        """Make ``lease`` this request's, to release when it ends; False if it already ended."""
        if self.ended:
            return False
        if isinstance(self._leases, tuple):
            self._leases = []  # most streams hold none: no list for each
        self._leases.append(lease)
        self._user = self._user or lease.user_id
        self._keeper.watch(lease, self.lease_lost)
        if self._stream_key is not None:
            self._registry.add_lease(self._stream_key, lease.user_id, lease.lease_id)
        return True

    def forget(self, lease: Lease) -> None:
        """``lease`` was released before the request ended: stop tracking it."""
        if lease in self._leases and isinstance(self._leases, list):
            self._leases.remove(lease)
            if self._stream_key is not None:
                self._registry.remove_lease(self._stream_key, lease.lease_id)

    def watch_disconnect(self) -> asyncio.Event:
        """Read ``receive`` in the background (for the app too): the event is set on disconnect."""
        self._start_pump()
        if self._gone is None:
            self._gone = asyncio.Event()
            if self._ended:
                self._gone.set()
        return self._gone

    def owns(self, lease: Lease) -> bool:
        """True if the request will release ``lease`` when it ends."""
        return lease in self._leases

    async def end(self, reason: CloseReason) -> None:
        """End the request's stream: release its leases once, shielded from cancellation."""
        if not self._ended:
            self._ended = True
            if self._gone is not None:
                self._gone.set()
            known = self.reporter.close_reason if self.reporter is not None else None
            self.close_reason = known or reason
            if self._span is not None:
                self._finish_span()
            if (
                self._leases
                or self._stream_key is not None
                or self._pump is not None
                or self._direct
            ):
                self._end = self._tasks.spawn(self._finish(), name="streaming_mw.request_end")
        if self._end is not None:  # plain requests that held nothing need no clean-up task
            await asyncio.shield(self._end)

    # --- the shutdown drain (`DrainTarget`) -------------------------------------------------

    def begin_drain(self) -> None:  # a direct stream may run on until the drain deadline
        pass

    async def cut_for_shutdown(self) -> None:
        """The drain deadline passed: stop the app; the middleware sends the last frame."""
        self._cut_short("shutdown")

    def lease_lost(self, lease: Lease) -> str:
        """The keeper found ``lease`` lost: end an event stream (``on_lease_lost="end"``), or
        let it go on uncounted. Returns what happens, for the keeper's log line."""
        options: StreamingOptions = self.container.options()
        if options.lease.on_lease_lost == "continue" or not self._event_stream:
            return "the stream goes on without it"
        self._cut_short("lease_lost")
        return "its stream ends with error lease_lost"

    def describe(self) -> str:
        """The stream's id, else its path (for log lines)."""
        return self._stream_id or shown(str(self._scope.get("path", "")))

    def cut_for_write_timeout(self) -> None:
        """The client stopped reading (`WriteWatchdog`): end the stream as a disconnect."""
        self._cut_short("write_timeout")

    def _cut_short(self, reason: CutReason) -> None:
        if not self._ended and self._task is not None and self._cut is None:
            self._cut = reason
            if self.reporter is not None:  # a followed stream reports why, not "shutdown"
                self.reporter.close_reason = "limit" if reason == "lease_lost" else reason
            self._task.cancel(f"streaming_mw: {reason}")

    async def shutdown_cut(self) -> bool:
        """The request task was cancelled: end an open event stream with a last frame (a
        followed one: ``retry:``; a direct one: ``error {reason: "shutdown"}`` and ``retry:``).

        True when the cancellation is spent: the drain cancelled the request, or the server
        did (its graceful-shutdown timeout) and the stream still ended properly. False when the
        caller must re-raise it."""
        ours = self._cut is not None
        ended_here = False
        if self._event_stream and not self._ended:
            # A client that stopped reading gets no last frame: it would not drain either.
            ended_here = self._cut == "write_timeout" or await self._send_last_frame()
            cut = self._cut or "shutdown"
            await self.end("limit" if cut == "lease_lost" else cut)
        if (ours or ended_here) and self._task is not None:
            return self._task.uncancel() == 0
        return False

    async def fail_stream(self, exc: BaseException) -> bool:
        """The app raised ``exc`` after an event stream started: log it with an ``error_id``,
        record it on the span, and end the stream with ``error {reason: "internal_error",
        error_id}`` and a clean end of body. False when this is not an open event stream (the
        caller re-raises)."""
        if not (self.response_started and self._event_stream) or self._ended:
            return False
        error_id = new_error_id()
        log.error(
            "stream %s of %s failed (error_id %s)",
            self._stream_id or "(direct)",
            self._scope.get("path", ""),
            error_id,
            exc_info=exc,
        )
        if self._span is not None:
            self._span.record_exception(exc, attributes={ATTR_ERROR_ID: error_id})
        options: StreamingOptions = self.container.options()
        expose = options.channel.expose_errors
        await self._send_final(failure_frame(exc, self._stream_id, error_id, expose=expose))
        await self.end("error")
        return True

    async def _send_last_frame(self) -> bool:
        followed = self.reporter is not None
        reason = self._cut or "shutdown"
        frame = cut_frame(reason, self._stream_id, followed=followed)
        return await self._send_final(frame, events=int(reason != "shutdown" or not followed))

    async def _send_final(self, frame: bytes, events: int = 1) -> bool:
        """End the body with ``frame`` (holding ``events`` events); False if the client is gone."""
        body = {"type": "http.response.body", "body": frame, "more_body": False}
        try:
            send = self._send if self._batch is None else self._batch.send_after
            await asyncio.wait_for(send(body), _LAST_FRAME_TIMEOUT)
        except (OSError, TimeoutError):
            return False  # the client is gone: nothing more to tell it
        self.bytes_sent += len(frame)
        self.frames_sent += events
        return True

    async def _finish(self) -> None:
        self._watchdog.forget(self)
        if self._batch is not None:
            self._batch.close()
        if self._direct:
            self.container.runtime().drain.discard(self)
        if self._pump is not None:
            self._pump.cancel()
        if self._inbox is not None:
            # After the response the app may still wait on `receive`; ASGI says it gets this.
            self._inbox.put_nowait({"type": "http.disconnect"})
        if self._leases:
            await release_leases(
                self._leases,
                self._keeper,
                self.container.lease_events(),
                reason=self.close_reason or "completed",
                path=self._scope.get("path", ""),
                lived=time.monotonic() - self._opened,
            )
        if self._stream_key is not None:
            self._registry.close(self._stream_key)

    # --- ASGI wrappers -------------------------------------------------------------------

    async def receive(self) -> Message:
        """The app's ``receive``: direct until the pump runs, then from the pump's inbox."""
        if self._inbox is not None:
            return await self._inbox.get()
        self._in_flight += 1
        try:
            message = await self.server_receive()
        finally:
            self._in_flight -= 1
        if message["type"] == "http.disconnect":
            await self.end("client_disconnect")
        elif self.response_started:
            self._start_pump()
        return message

    async def send(self, message: Message) -> None:
        """The app's ``send``: notes the response start and end, and a failed send."""
        kind = message["type"]
        batch = self._batch
        kept = False
        if kind == "http.response.start":
            self.response_started = True
            event_stream = self._event_stream = is_event_stream(message)
            if event_stream:
                self._span, self._stream_id, self.stream_kind = open_span(
                    self.telemetry, message, self.stream_kind
                )
                channel = self.container.options().channel
                self._watchdog.watch(self, channel.write_timeout)
                if self.reporter is None:  # an EventStreamResponse drains itself
                    self._direct = True
                    self.container.runtime().drain.add(self, direct=True)
                    if channel.coalesce_writes:
                        self._batch = WriteBatch(self._send, self)
            if self._leases or event_stream:
                self._open_stream()
                self._start_pump()
        elif kind == "http.response.body" and self._span is not None:
            # Runs for every chunk of an event stream: counts in place, nothing more (the
            # registry reads the counts when asked, see `_activity`).
            body = message.get("body", b"")
            self.bytes_sent += len(body)
            frames = body.count(b"\n\n")
            if frames:
                self.frames_sent += frames
                # The usual chunk is one whole event; comments (": ping") are not events.
                if (frames == 1 and body[0] != _COLON) or self._comments_in(body, frames):
                    self._last_event_at = _now()
            if batch is not None and message.get("more_body", False):
                if batch.add(body):
                    return  # leaves with this loop turn's write (`WriteBatch`)
                kept = True  # leaves with what the batch holds, now
        self.sending_since = time.monotonic()
        try:
            if batch is not None:
                await batch.flush()
            if not kept:
                await self._send(message)
        except OSError:
            # ASGI 2.4: sending on a closed connection raises OSError.
            await self.end("client_disconnect")
            raise
        self.sending_since = 0.0
        if kind == "http.response.body" and not message.get("more_body", False):
            await self.end("completed")

    def _finish_span(self, /) -> None:
        span, self._span = self._span, None
        if span is not None:
            reporter = self.reporter
            close_span(
                span,
                self.telemetry,
                self.close_reason or "completed",
                kind=self.stream_kind,
                events=reporter.events_sent if reporter is not None else self.frames_sent,
                bytes_sent=self.bytes_sent,
                resume=reporter.resume_cursor if reporter is not None else None,
                user=self._user,
            )

    def _open_stream(self) -> None:
        if self._stream_key is None:
            path = self._scope.get("path", "")
            self._stream_key = self._registry.open(path, self._stream_id, self._activity)
            for lease in self._leases:
                self._registry.add_lease(self._stream_key, lease.user_id, lease.lease_id)

    def _comments_in(self, body: bytes, frames: int) -> bool:
        """Count the comment frames of ``body`` (``frames`` frames); True if it holds events."""
        comments = min(frames, (body[0] == _COLON) + body.count(b"\n\n:"))
        self._comments += comments
        return comments < frames

    def _activity(self) -> tuple[int, float | None]:
        """Events sent so far (comments not counted) and when the last one was."""
        return self.frames_sent - self._comments, self._last_event_at

    def _start_pump(self) -> None:
        # Never read `receive` concurrently with the app: wait until its own call returns.
        if self._pump is None and self._in_flight == 0 and not (self.ended or self.reads_receive):
            self._inbox = asyncio.Queue()
            work = pump_receive(self.server_receive, self._inbox, self.end)
            self._pump = self._tasks.spawn(work, name="streaming_mw.disconnect")
