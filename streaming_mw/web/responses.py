"""`EventStreamResponse`: relays a `Follower` to the client as ``text/event-stream``.

Starts with a ``retry:`` field (``ChannelConfig.retry_ms``), sends keep-alive pings after
``ping_interval`` seconds of silence, ends a stream nobody published to for ``max_idle_time``
with ``error {reason: "idle_timeout"}``, ends after a terminal event, and cuts off a follower
that fell behind (``SlowConsumerError``), or whose backend failed mid-stream
(``BackendUnavailableError``), with a ``retry:`` hint so the browser resumes from its
cursor. When the process drains for shutdown it ends after the last whole event it sent, with a
jittered ``retry:`` (the client resumes elsewhere from that cursor: no gap, no duplicate).
Client disconnects are seen under ASGI 2.3 (``http.disconnect``) and 2.4 (a failing ``send``),
and the follower is always closed.

While the relay waits, caught up, a live event is written from the fan-out's own call
(``_take_live``, through a `WriteBatch`): the relay's task is not woken, so an event to many
followers costs each one a write, not a task step with its coroutines and future, and leaves
nothing alive for the garbage collector to walk (``ChannelConfig.coalesce_writes=False`` turns
this off too). What the fast path cannot do it leaves to the task: a terminal event, a gap or
a new epoch, a write still pending (the client reads slowly), a drain.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING

import orjson
from starlette.responses import Response

from ..errors import BackendUnavailableError, SlowConsumerError
from ..runtime.container import current_container
from ..sse import PING, encode, sse_headers
from .coalesce import SendClock, WriteBatch
from .context import current_request
from .disconnect import DisconnectWatch
from .frames import cut_frame, cut_off_frame, idle_timeout_frame, shared_headers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import Receive, Scope, Send

    from .._types import JSONValue
    from ..channels import Follower
    from ..channels.base import Notice
    from ..config import ChannelConfig
    from ..events import StreamEvent
    from ..telemetry import Telemetry
    from .tracking import CloseReason

__all__ = ["EventStreamResponse", "json_error"]

log = logging.getLogger("streaming_mw.responses")

_BATCH_BYTES = 64 * 1024
_CLOCK_SLACK = 0.01
LIVENESS_EVERY = 1.0
"""Seconds of silence after which a follower checks that its stream's producer is alive."""
_LAG_SAMPLE_EVERY = 0.05
"""Seconds between two delivery-lag samples of one stream."""


def json_error(status: int, detail: str) -> Response:
    """A small JSON error response."""
    return Response(orjson.dumps({"detail": detail}), status, media_type="application/json")


class EventStreamResponse(DisconnectWatch, Response):
    """The SSE response of one follower."""

    media_type = "text/event-stream"

    # Slots: past 30 attributes an instance's values spill into a dict of its own (1.5 KiB
    # for each open stream); only Starlette's few stay in the instance dict.
    # fmt: off
    __slots__ = (
        "_batch", "_delivered_at", "_draining", "_lag_sampled", "_prefix", "_waiter",
        "bytes_sent", "config", "events_sent", "follower", "idle_detail",
        "liveness", "on_close", "telemetry",
    )
    # fmt: on

    def __init__(
        self,
        follower: Follower,
        config: ChannelConfig,
        *,
        on_close: Callable[[CloseReason], Awaitable[None] | None] | None = None,
        idle_detail: Callable[[], Awaitable[dict[str, JSONValue] | None]] | None = None,
        telemetry: Telemetry | None = None,
        liveness: Callable[[], Awaitable[bool | None]] | None = None,
    ) -> None:
        self.follower = follower
        self.liveness = liveness
        """Asked after each ``LIVENESS_EVERY`` seconds of silence: True when it ended the
        stream (its producer is gone; the terminal event is then in the stream), None when
        the stream has no producer to watch (it is not asked again)."""
        self.idle_detail = idle_detail
        self.telemetry = telemetry
        self.config = config
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers(sse_headers(follower.stream_id))
        self.raw_headers = shared_headers(self.raw_headers)
        self.close_reason: CloseReason | None = None
        self.events_sent = 0
        self.bytes_sent = 0
        self._lag_sampled = 0.0
        self._draining = False
        self._waiter: asyncio.Task[object] | None = None
        self._init_watch()
        self._batch: WriteBatch | None = None  # writes live events from outside the task
        self._delivered_at = -1.0  # loop time of the last such write
        # Deliberate, not the client's default (3 s); sent with the first write, no extra one.
        self._prefix = b"" if config.retry_ms is None else encode(retry=config.retry_ms)

    def begin_drain(self) -> None:
        """The process drains: end after the event being sent, or now if waiting."""
        self._draining = True
        if self._waiter is not None:
            self._waiter.cancel("streaming_mw: drain")

    async def cut_for_shutdown(self) -> None:
        """Nothing to do: a followed stream ends as soon as the drain begins."""

    def drain_requested(self) -> bool:
        """The drain asked this stream to end (a call: it changes across awaits)."""
        return self._draining

    async def _prepare(self, scope: Scope) -> Response | None:
        """Run first when served: a response to send instead of the stream (None: relay)."""
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine for the whole response, the waits included: each level of calls would
        # be one more coroutine object kept alive by every idle follower.
        instead = await self._prepare(scope)
        if instead is not None:
            await instead(scope, receive, send)
            return
        relay = asyncio.current_task()
        request = current_request.get()
        if request is not None:  # the middleware reads our counters when it ends the span
            request.reporter = self
        context = contextvars.copy_context()  # for what runs outside the task on its behalf
        version = scope.get("asgi", {}).get("spec_version", "2.0")
        if relay is not None and tuple(int(p) for p in version.split(".")) < (2, 4):
            # ASGI 2.3: the disconnect comes through `receive` only (`DisconnectWatch`).
            own = False  # the server's `receive`, with nothing in between
            if request is not None:  # the middleware needs no pump to see the disconnect
                request.reads_receive = True
                if receive == request.receive:  # one coroutine less: the wrapper's
                    receive, own = request.server_receive, True
            self._watch(receive, relay, context, by_hand=own)
        drain = current_container().runtime().drain
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            drain.add(self, direct=False)
            loop = asyncio.get_running_loop()
            sink = None
            if self.config.coalesce_writes:
                self._batch = WriteBatch(
                    send,
                    request if request is not None else SendClock(),
                    context=context,
                    on_failure=self.follower,  # interrupted: the relay finds the failure, ends
                )
                sink = self._take_live
            idle_until = loop.time() + self.config.max_idle_time
            next_ping = loop.time() + self.config.ping_interval
            try:
                while True:
                    if self.drain_requested():
                        await self._drained(send)
                        break
                    if self._batch is not None and self._batch.failed:
                        await self._batch.flush()  # raises what the live write raised
                    wait = max(0.0, min(next_ping, idle_until) - loop.time())
                    if self.liveness is not None:
                        wait = min(wait, LIVENESS_EVERY)
                    self._waiter = relay  # the drain cancels only this wait, never a write
                    waited_from = loop.time()
                    self.follower.set_sink(sink)
                    try:
                        # Idle, the relay awaits the subscription's future itself: no
                        # coroutine of the follower's kept alive for the length of the wait.
                        idle = self.follower.idle_wait(wait)
                        left: float | None = wait
                        if idle is not None:
                            try:
                                await idle
                            finally:
                                left = self.follower.end_wait()
                        event = await self.follower.next(left)
                    except asyncio.CancelledError:
                        if not self._draining or relay is None or relay.uncancel() > 0:
                            raise
                        event = None
                    finally:
                        self._waiter = None
                        self.follower.set_sink(None)
                    if self.drain_requested():
                        continue  # woken by the drain (the event, if any, stays in history)
                    if event is None:
                        if self.follower.finished:
                            self.close_reason = "completed"
                            break
                        if self._delivered_at >= waited_from:
                            # Events went out from the sink, each restarting the wait: it is
                            # ``wait`` seconds since the last one.
                            next_ping = self._delivered_at + self.config.ping_interval
                            idle_until = self._delivered_at + self.config.max_idle_time
                        if loop.time() >= idle_until:
                            await self._idle_timeout(send)
                            break
                        if self.liveness is not None and await self._producer_gone():
                            continue  # its terminal event is in the stream: read it
                        if loop.time() < next_ping - _CLOCK_SLACK:
                            continue
                        await self._write(send, PING)
                        next_ping = loop.time() + self.config.ping_interval
                        continue
                    next_ping = loop.time() + self.config.ping_interval
                    idle_until = loop.time() + self.config.max_idle_time
                    if await self._send_batch(send, event):
                        self.close_reason = "completed"
                        break
            except (SlowConsumerError, BackendUnavailableError) as exc:
                if isinstance(exc, BackendUnavailableError):
                    log.warning(
                        "stream %s: %s; its client is told to resume", self.follower.stream_id, exc
                    )
                self.close_reason, frame = cut_off_frame(exc)
                await self._write(send, frame)
            await self._write(send, b"", more=False)
        except OSError:  # sending on a closed connection (ASGI 2.4, and some 2.3 servers)
            self.close_reason = "client_disconnect"
        except asyncio.CancelledError:
            if not (self._cut and relay is not None and relay.uncancel() == 0):
                self.close_reason = self.close_reason or "shutdown"  # cut by the server
                raise
            # only the watcher cancelled it: the client is gone, or reading from it failed
        except Exception:
            self.close_reason = self.close_reason or "error"
            raise
        finally:
            self._stop_watching()
            drain.discard(self)
            if self._batch is not None:
                self._batch.close()
            self.follower.aclose()
            await self._closed()
        if self._cut and self._receive_failed is not None:
            raise self._receive_failed

    @property
    def resume_cursor(self) -> str | None:
        """The ``Last-Event-ID`` this response resumed after."""
        return self.follower.resumed_from

    async def _closed(self) -> None:
        reason: CloseReason = self.close_reason or "client_disconnect"
        self.close_reason = reason
        if self.on_close is not None:
            try:
                result = self.on_close(reason)
                if result is not None:
                    await result
            except Exception:
                log.exception("on_close callback of stream %s failed", self.follower.stream_id)

    async def _write(self, send: Send, chunk: bytes, *, more: bool = True) -> None:
        if self._prefix:
            chunk, self._prefix = self._prefix + chunk, b""
        if self._batch is not None:
            await self._batch.flush()  # what went out from outside the task goes first
        await send({"type": "http.response.body", "body": chunk, "more_body": more})
        self.bytes_sent += len(chunk)

    def _take_live(self, notice: Notice) -> bool:
        """The subscription's sink while the relay waits: write ``notice``'s event from here,
        if the follower is caught up and nothing else is under way; False to wake the relay."""
        batch = self._batch
        if self._draining or batch is None or not batch.accepts():
            return False
        taken = self.follower.offer(notice)
        if taken is None:
            return False
        event, frame = taken
        if self._prefix:
            frame, self._prefix = self._prefix + frame, b""
        batch.keep(frame)
        self.events_sent += 1
        self.bytes_sent += len(frame)
        self._delivered_at = asyncio.get_running_loop().time()
        try:  # the event is taken: a metrics SDK's failure must not lose it
            self._sample_lag(event)
        except Exception:
            log.exception("recording the delivery lag of %s failed", event.stream_id)
        return True

    def _sample_lag(self, event: StreamEvent) -> None:
        """Record ``event``'s delivery lag, at most every ``_LAG_SAMPLE_EVERY`` seconds."""
        if self.telemetry is not None:
            now = time.time()
            if now - self._lag_sampled >= _LAG_SAMPLE_EVERY:  # sampled: no cost per event
                self._lag_sampled = now
                self.telemetry.delivery_lag.record(max(0.0, now - event.timestamp))

    async def _producer_gone(self) -> bool:
        liveness = self.liveness
        if liveness is None:
            return False
        try:
            gone = await liveness()
        except Exception:
            log.exception("liveness check of stream %s failed", self.follower.stream_id)
            return False
        if gone is None:  # nothing to watch: wait for events and pings only
            self.liveness = None
        return bool(gone)

    async def _drained(self, send: Send) -> None:
        self.close_reason = "shutdown"  # the relay ends the body after this
        await self._write(send, cut_frame("shutdown", None, followed=True))

    async def _send_batch(self, send: Send, event: StreamEvent) -> bool:
        """Send ``event`` and whatever else is ready, in one write; True after a terminal."""
        chunks = [self.follower.frame(event)]
        size, terminal = len(chunks[0]), event.is_terminal
        while not terminal and size < _BATCH_BYTES:
            more = self.follower.ready()
            if more is None:
                break
            chunks.append(self.follower.frame(more))
            size += len(chunks[-1])
            terminal = more.is_terminal
        self.events_sent += len(chunks)
        await self._write(send, b"".join(chunks))
        if not self.follower.replaying:
            self._sample_lag(event)
        return terminal

    async def _idle_timeout(self, send: Send) -> None:
        self.close_reason = "idle_timeout"
        detail: dict[str, JSONValue] = {}
        if self.idle_detail is not None:
            try:
                detail = await self.idle_detail() or {}
            except Exception:
                log.exception("idle_detail of stream %s failed", self.follower.stream_id)
        seconds = self.config.max_idle_time
        await self._write(send, idle_timeout_frame(self.follower.stream_id, seconds, detail))
        self.events_sent += 1  # the relay ends the body
