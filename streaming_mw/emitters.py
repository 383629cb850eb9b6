"""Task-side API: `SSEEmitter` / `DeploymentEmitter` / `StreamContext` publish events to a stream.

The seed's methods — ``log``, ``progress``, ``complete``, ``error`` — work from any thread:

* in a worker thread they block until the event is accepted and return it (already done);
* on the emitter's event loop they return an awaitable (a task, started at once, so events keep
  the order of the calls): an async worker writes ``await emitter.log("...")``.

``complete`` and ``error`` are terminal: the stream ends, and a later call raises
`StreamClosedError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import secrets
import threading
from typing import TYPE_CHECKING, Any, Final

from ._types import random_id, validate_stream_id
from .channels.base import ProducerMark
from .channels.stream import final_state_of
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidEventError,
    StreamClosedError,
    StreamNotFoundError,
)
from .events import EventType, StreamEvent, as_stream_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Generator

    from ._types import JSONValue
    from .channels import AsyncStreamChannel, StreamMeta, StreamState
    from .events import ServerSentEventLike

__all__ = ["DeploymentEmitter", "SSEEmitter", "StreamContext", "new_stream_id"]

PUBLISH_TIMEOUT: Final = 30.0
"""Seconds a worker thread waits for the event loop to accept an event."""

RETRY_FOR: Final = 10.0
"""Seconds a publish keeps retrying while the backend is unavailable, before it fails."""


def new_stream_id() -> str:
    """A fresh stream id: 128 random bits, URL-safe (22 characters), never starting with
    ``-``."""
    return random_id()


class Published:
    """An event already accepted (returned to worker threads); awaiting it gives the event."""

    __slots__ = ("event",)

    def __init__(self, event: StreamEvent) -> None:
        self.event = event

    def __await__(self) -> Generator[Any, None, StreamEvent]:
        return asyncio.sleep(0, self.event).__await__()


class _Handoff:
    """A worker thread waits on this for the loop's answer: one lock released once, with no
    future chained across threads (the loop pays for a ``Condition`` otherwise)."""

    __slots__ = ("_error", "_event", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._event: StreamEvent | None = None
        self._error: BaseException | None = None

    def done(self, event: StreamEvent) -> None:
        self._event = event
        self._lock.release()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._lock.release()

    def settle(self, task: asyncio.Task[StreamEvent]) -> None:
        if task.cancelled():
            self.fail(concurrent.futures.CancelledError())
        elif (error := task.exception()) is not None:
            self.fail(error)
        else:
            self.done(task.result())

    def wait(self, timeout: float) -> StreamEvent:
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError(f"the event loop did not take the event within {timeout:g} s")
        if self._error is not None:
            raise self._error
        assert self._event is not None
        return self._event


class SSEEmitter:
    """Publishes the events of one stream.

    ``stream_id`` defaults to a fresh random id; ``owner`` (a user id) restricts who may follow
    the stream with `stream_response`. The emitter must be bound to a channel — `get_emitter`
    and `sse_response` do that — and opened (`open`) before it publishes.
    """

    def __init__(
        self,
        channel: AsyncStreamChannel | None = None,
        *,
        stream_id: str | None = None,
        owner: str | None = None,
    ) -> None:
        self.stream_id = new_stream_id() if stream_id is None else validate_stream_id(stream_id)
        self.owner = owner
        self.channel = channel
        self.epoch: str | None = None
        self.cancelled = False
        """Set when the stream was cancelled (``cancel_on_disconnect``); sync workers poll it."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self.terminal: str | None = None
        """The terminal event type emitted (``complete`` or ``error``), if any."""
        self._tasks: set[asyncio.Task[StreamEvent]] = set()
        self._producer_id = secrets.token_urlsafe(9)
        self._appends = 0
        # Worker threads that append without the loop number their appends apart (a second
        # producer), under a lock of their own: neither side waits for the other's lock.
        self._thread_lock = threading.Lock()
        self._thread_producer_id = secrets.token_urlsafe(9)
        self._thread_appends = 0

    @property
    def closed(self) -> bool:
        """A terminal event (``complete`` or ``error``) was emitted."""
        return self._closed

    def detach(self) -> None:
        """Refuse every later event (`StreamClosedError`): the stream now belongs to someone
        else, e.g. a job taken over by another worker."""
        self._closed = True
        self.cancelled = True

    def bind(self, channel: AsyncStreamChannel) -> None:
        """Use ``channel`` unless the emitter already has one."""
        if self.channel is None:
            self.channel = channel

    async def open(self) -> StreamMeta:
        """Create the stream (if it does not exist) on the running loop; idempotent."""
        if self.channel is None:
            raise ConfigurationError(
                "emitter has no channel: use get_emitter/sse_response, or pass "
                "channel=get_container().stream_channel()"
            )
        meta = await self.channel.create(self.stream_id, owner=self.owner)
        self.epoch = meta.epoch
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        return meta

    # --- the seed's API ------------------------------------------------------------------

    def log(self, message: str, level: str = "info", **fields: JSONValue) -> Awaitable[StreamEvent]:
        """A ``log`` event ``{message, level, **fields}``."""
        return self.emit(EventType.LOG, {**fields, "message": str(message), "level": level})

    def progress(
        self, percent: float, step: str | None = None, **fields: JSONValue
    ) -> Awaitable[StreamEvent]:
        """A ``progress`` event ``{percent, step, **fields}``; ``percent`` within 0..100."""
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not math.isfinite(percent)
            or not 0 <= percent <= 100
        ):
            raise InvalidEventError(f"percent must be a number from 0 to 100, got {percent!r}")
        data: dict[str, JSONValue] = {**fields, "percent": percent}
        if step is not None:
            data["step"] = step
        return self.emit(EventType.PROGRESS, data)

    def complete(self, success: bool = True, **result: JSONValue) -> Awaitable[StreamEvent]:
        """The terminal ``complete`` event ``{success, **result}``."""
        return self.emit(EventType.COMPLETE, {**result, "success": bool(success)})

    def error(self, message: str, **details: JSONValue) -> Awaitable[StreamEvent]:
        """The terminal ``error`` event ``{message, **details}``."""
        return self.emit(EventType.ERROR, {**details, "message": str(message)})

    # --- the mechanism -------------------------------------------------------------------

    def emit(
        self, event_type: str | StreamEvent | ServerSentEventLike, data: JSONValue = None
    ) -> Awaitable[StreamEvent]:
        """Publish any event type (checked like every SSE ``event`` field) with ``data``.

        ``event_type`` may also be a whole event, given without ``data``: a `StreamEvent` or
        FastAPI's ``ServerSentEvent`` (converted by `as_stream_event`). Its ``id`` is replaced
        by the stream's cursor, as for every published event.
        """
        if isinstance(event_type, str):
            event = StreamEvent(event_type, data, None, self.stream_id)
        else:
            if data is not None:
                raise InvalidEventError("emit(event) takes its data from the event: pass no data")
            given = as_stream_event(event_type)
            event = StreamEvent(given.type, given.data, None, self.stream_id, given.timestamp)
        loop, lock, channel = self._loop, self._lock, self.channel
        if loop is None or lock is None or channel is None:
            raise ConfigurationError("emitter is not open: await emitter.open() first")
        if self._closed:
            raise StreamClosedError(self.stream_id)
        payload = channel.encode(event)  # a refused event changes nothing, terminal or not
        if event.is_terminal:
            self._closed = True
            self.terminal = event.type
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(self._publish(channel, lock, event, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return task
        if running is not None:  # another event loop: awaitable there, without blocking it
            publish = self._publish(channel, lock, event, payload)
            return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(publish, loop))
        return Published(self._publish_from_thread(loop, channel, lock, event, payload))

    def _publish_from_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        channel: AsyncStreamChannel,
        lock: asyncio.Lock,
        event: StreamEvent,
        payload: bytes,
    ) -> StreamEvent:
        """A worker thread's event: appended from this thread when the backend can (Redis with
        a synchronous client) and nothing of this emitter is in flight on the loop, else handed
        to the loop. One thread at a time, so producer marks keep their order."""
        with self._thread_lock:
            retry: ProducerMark | None = None
            if not self._tasks and not lock.locked():
                self._thread_appends += 1
                mark = ProducerMark(self._thread_producer_id, self._thread_appends)
                try:
                    seq = channel.append_from_thread(
                        loop,
                        self.stream_id,
                        payload,
                        final_state_of(event),
                        epoch=self.epoch,
                        producer=mark,
                    )
                except (StreamNotFoundError, BackendUnavailableError):
                    retry = mark  # the loop re-creates the stream or retries, with this mark
                except BaseException:
                    if event.is_terminal:
                        self._closed, self.terminal = False, None
                    raise
                else:
                    if seq is not None:
                        return event.with_id(f"{self.epoch}-{seq}")
                    self._thread_appends -= 1  # not sent: the mark is free again
            handoff = _Handoff()
            loop.call_soon_threadsafe(
                self._publish_soon, handoff, channel, lock, event, payload, retry
            )
            return handoff.wait(PUBLISH_TIMEOUT)

    def _publish_soon(
        self,
        handoff: _Handoff,
        channel: AsyncStreamChannel,
        lock: asyncio.Lock,
        event: StreamEvent,
        payload: bytes,
        retry: ProducerMark | None,
    ) -> None:
        """On the loop, for a worker thread: append at once when the backend can and nothing of
        this emitter is in flight (order stays call order), else in a task; wake the thread.
        ``retry``: the mark of a thread's append that failed and may have been applied."""
        if retry is None and not lock.locked() and not self._tasks:
            self._appends += 1
            mark = ProducerMark(self._producer_id, self._appends)
            try:
                seq = channel.append_nowait(
                    self.stream_id, payload, final_state_of(event), epoch=self.epoch, producer=mark
                )
            except (StreamNotFoundError, BackendUnavailableError):
                seq = None  # the task below re-creates the stream, or retries
            except BaseException as exc:
                if event.is_terminal:
                    self._closed, self.terminal = False, None
                handoff.fail(exc)
                return
            if seq is not None:
                # Woken after the followers this append woke have written it, not before: the
                # worker thread would otherwise compete with them for the GIL.
                loop = asyncio.get_running_loop()
                loop.call_soon(handoff.done, event.with_id(f"{self.epoch}-{seq}"))
                return
            self._appends -= 1  # not applied: the task numbers it again
        publish = self._publish(channel, lock, event, payload, retry)
        task = asyncio.get_running_loop().create_task(publish)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(handoff.settle)

    async def _publish(
        self,
        channel: AsyncStreamChannel,
        lock: asyncio.Lock,
        event: StreamEvent,
        payload: bytes,
        mark: ProducerMark | None = None,
    ) -> StreamEvent:
        async with lock:  # one at a time: seq order is call order
            if mark is None:
                self._appends += 1  # every retry of this event carries the same mark
                mark = ProducerMark(self._producer_id, self._appends)
            try:
                seq = await self._append(channel, payload, final_state_of(event), mark)
            except BaseException:
                if event.is_terminal:  # it did not end the stream: let another terminal try
                    self._closed, self.terminal = False, None
                raise
        return event.with_id(f"{self.epoch}-{seq}")

    async def _append(
        self,
        channel: AsyncStreamChannel,
        payload: bytes,
        final_state: StreamState | None,
        mark: ProducerMark,
    ) -> int:
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await channel.append(
                    self.stream_id, payload, final_state, epoch=self.epoch, producer=mark
                )
            except StreamNotFoundError:
                # The backend lost the stream (a Redis restart without persistence): create it
                # again; followers see the new epoch and get a `reset`.
                self.epoch = (await channel.create(self.stream_id, owner=self.owner)).epoch
            except BackendUnavailableError:
                if waited >= RETRY_FOR:
                    raise
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 1.0)

    async def drain(self) -> None:
        """Wait until every event emitted from the loop so far is published."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class DeploymentEmitter(SSEEmitter):
    """The emitter of long jobs (seed: ``DeploymentEmitter``): logs, progress, a result."""


class StreamContext(SSEEmitter):
    """The same API for code that runs elsewhere and was handed an existing ``stream_id``."""

    def __init__(
        self,
        stream_id: str,
        channel: AsyncStreamChannel | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        super().__init__(channel, stream_id=stream_id, owner=owner)
