"""`Generation`: the producer of one resumable direct stream, in a task of its own.

It runs the route's async generator, numbers each event ``<epoch>-<seq>`` itself and hands its
frame to the first client at once (`DirectSink`: no backend round trip on the hot path), while
a writer records the same events in the stream's history a batch at a time, one in flight,
through the process's `HistoryWriter` (one round trip for the batches of all streams; one
`ProducerMark` per batch, so a retried batch is stored once). Followers on any process
therefore resume from history with the same cursors.

The generation outlives its first client on a budget: after the client leaves it runs on
while someone follows the stream live (`ProducingBackend.followers`) and for ``resume_grace``
seconds beyond that, then ``aclose()``\\s the generator and ends the stream with
``complete {cancelled: true, reason: "abandoned"}``. One loop per process (`watch_producers`)
refreshes the heartbeats that followers check (``error {reason: "producer_lost"}`` once one
expires) and looks at the cancel flags of `cancel_stream` every ``CANCEL_POLL`` seconds, for
all of the process's generations in one round trip. The request's stream leases are held
until the generator has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

import orjson

from .._failure import failure_details, new_error_id
from ..channels.base import ProducerMark
from ..channels.memory import MemoryChannelBackend
from ..channels.producing import Batch
from ..channels.stream import final_state_of
from ..errors import (
    BackendUnavailableError,
    EventTooLargeError,
    InvalidEventError,
    StreamClosedError,
)
from ..events import new_epoch
from .history import history_writer, write_flight
from .lease import release_lease
from .liveness import CANCEL_POLL, HEARTBEAT_TTL, watch_producers
from .sink import DirectSink, as_event, complete_event, error_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

    from ..channels import AsyncStreamChannel
    from ..channels.base import StreamState
    from ..channels.producing import ProducingBackend
    from ..events import StreamEvent
    from ..leases.base import Lease
    from ..runtime.container import Runtime, StreamingContainer

__all__ = ["Generation"]

log = logging.getLogger("streaming_mw.resumable")

PRESENCE_POLL: Final = 0.25
_BATCH: Final = 512
_FLIGHT: Final = 8
"""Batches of one stream in one round trip at most."""
_HISTORY_HIGH: Final = 8192
"""Events waiting for the history writer before the generator waits for it."""
_YIELD_EVERY: Final = 64
_FLUSH_TIMEOUT: Final = 15.0


class Generation:
    """One resumable stream being generated in this process (a `LocalProducer`)."""

    def __init__(
        self,
        source: AsyncIterable[object],
        *,
        stream_id: str,
        owner: str,
        resume_grace: float,
        channel: AsyncStreamChannel,
        backend: ProducingBackend,
        container: StreamingContainer,
        leases: tuple[Lease, ...],
    ) -> None:
        self.stream_id = stream_id
        self.owner = owner
        self.resume_grace = resume_grace
        self.sink: DirectSink | None = DirectSink()
        self._source: AsyncIterator[object] = aiter(source)
        self._channel = channel
        self._backend = backend
        self._container = container
        self._runtime: Runtime = container.runtime()
        self._writer = history_writer(backend, self._runtime.tasks)
        self.leases = leases
        self._epoch = new_epoch()  # ours: the first event's id needs no round trip
        self._epoch_b = self._epoch.encode()
        self._sid = stream_id.encode()
        self._max_bytes = channel.config.max_event_bytes
        self._names: dict[str, tuple[bytes, bytes]] = {}
        self._seq = 0
        self._history: list[bytes] = []
        self._final: StreamState | None = None
        self._ended = False
        self._history_failed = False
        self._final_stored = False  # the last batch ended the producing in the same step
        self._wake_writer = asyncio.Event()
        self._writer_room = asyncio.Event()
        self._producer_id = self._epoch  # random, and one producer per stream incarnation
        self._batches = 0
        self._stop_reason: str | None = None
        self._generating = False
        self._alone_since: float | None = None
        self._grace_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self.shared = not isinstance(backend, MemoryChannelBackend)
        self._held = False  # the drain sent the client elsewhere: run on until its deadline
        self.done = asyncio.Event()

    # --- control --------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the stream now, before the response starts (`StreamExistsError` if its id is
        taken); without it, `start` creates it while the generator makes its first item."""
        self._opening = asyncio.ensure_future(self._open())
        await self._opening

    def start(self) -> None:
        runtime = self._runtime
        runtime.producers[self.stream_id] = self
        runtime.drain.add(self, direct=True)
        self._task = runtime.tasks.spawn(self._run(), name="streaming_mw.resumable")
        if runtime.producer_watch is None or runtime.producer_watch.done():
            watch = watch_producers(runtime, self._backend)
            runtime.producer_watch = runtime.tasks.spawn(
                watch, name="streaming_mw.producers", detach=True
            )

    def stop(self, reason: str) -> None:
        """Close the generator now and end the stream (``cancelled``, ``abandoned``,
        ``shutdown``); no-op once it has ended."""
        if self._stop_reason is None and self._generating and self._task is not None:
            self._stop_reason = reason
            self._task.cancel(f"streaming_mw: {reason}")

    def detach(self) -> None:
        """The first client left before the end."""
        sink, self.sink = self.sink, None
        if sink is None or sink.finished:
            return
        sink.leave()
        if self.resume_grace <= 0 and not self._held:
            self.stop("abandoned")
        elif self._generating:
            self._alone_since = asyncio.get_running_loop().time()
            self._grace_task = asyncio.create_task(self._grace(), name="streaming_mw.grace")

    # --- the producer ---------------------------------------------------------------------

    async def _run(self) -> None:
        writer: asyncio.Task[None] | None = None
        self._generating = True
        opened = self._opening or asyncio.ensure_future(self._open())
        terminal: StreamEvent | None = None
        raise_after = False
        try:
            async for item in self._source:
                if writer is None:  # the stream is being created meanwhile: the writer waits
                    writer = asyncio.create_task(self._write(opened), name="streaming_mw.history")
                if isinstance(item, str):  # the common case (a token), without a StreamEvent
                    self._put("token", orjson.dumps({"token": item}), time.time())
                else:
                    event = as_event(item)
                    self._emit(event)
                    if event.is_terminal:
                        break
                # from the first event on (its client writes it before the generator goes on)
                if self._seq % _YIELD_EVERY == 1 or len(self._history) > _HISTORY_HIGH:
                    await self._room()
            terminal = None if self._final is not None else complete_event(success=True)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            ours = self._stop_reason is not None and task is not None and task.uncancel() == 0
            reason = self._stop_reason if ours else "shutdown"
            if reason == "shutdown":
                raise_after = not ours
                terminal = error_event("the server shut down", reason="shutdown")
            else:
                terminal = complete_event(success=False, cancelled=True, reason=reason)
        except Exception as exc:
            terminal = self._failed(exc)
        finally:
            self._generating = False
            await self._close_source()
        await self._finish(opened, terminal, writer)
        if raise_after:
            raise asyncio.CancelledError

    async def _open(self) -> None:
        await self._backend.create_generated(
            self.stream_id, owner=self.owner, ttl=HEARTBEAT_TTL, epoch=self._epoch
        )

    async def _close_source(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.exception("closing the generator of stream %s failed", self.stream_id)

    def _failed(self, exc: Exception) -> StreamEvent:
        error_id = new_error_id()
        log.error(
            "generator of stream %s failed (error_id %s)",
            self.stream_id,
            error_id,
            exc_info=exc,
        )
        expose = self._channel.config.expose_errors
        return error_event("generation failed", **failure_details(exc, error_id, expose=expose))

    async def _finish(
        self,
        opened: asyncio.Future[None],
        terminal: StreamEvent | None,
        writer: asyncio.Task[None] | None,
    ) -> None:
        try:
            try:
                await opened
            except Exception:
                log.exception("could not create resumable stream %s", self.stream_id)
                self._history_failed = True
            if terminal is not None:
                self._emit(terminal)
            if self.sink is not None:
                self.sink.finish()
            await self._release_leases()
            if writer is None and not self._history_failed:
                writer = asyncio.create_task(self._write(opened), name="streaming_mw.history")
            if writer is not None:
                self._wake_writer.set()
                try:
                    await asyncio.wait_for(asyncio.shield(writer), _FLUSH_TIMEOUT)
                except TimeoutError:
                    log.error("stream %s: history not flushed in time", self.stream_id)
                except Exception:
                    log.exception("stream %s: writing history failed", self.stream_id)
        finally:
            if self._grace_task is not None:
                self._grace_task.cancel()
            if self._runtime.producers.get(self.stream_id) is self:
                del self._runtime.producers[self.stream_id]
            self._runtime.drain.discard(self)
            if not self._final_stored:
                with contextlib.suppress(BackendUnavailableError):
                    await self._backend.stop_producing(self.stream_id)
            self.done.set()

    async def _release_leases(self) -> None:
        for lease in self.leases:
            await release_lease(self._container, lease)

    def _emit(self, event: StreamEvent) -> None:
        """Frame ``event`` for the first client and queue it for history (no await)."""
        try:
            data = orjson.dumps(event.data)
        except TypeError as exc:
            raise InvalidEventError(f"event data is not JSON-serialisable: {exc}") from exc
        self._put(event.type, data, event.timestamp)
        if event.is_terminal:
            self._final = final_state_of(event)
            self._ended = True

    def _put(self, event_type: str, data: bytes, timestamp: float) -> None:
        """One event (its type checked, ``data`` its JSON) to the client and to history."""
        names = self._names.get(event_type)
        if names is None:
            names = self._names[event_type] = (
                orjson.dumps(event_type),
                f"event: {event_type}\ndata: ".encode(),
            )
        payload = b'{"t":%b,"ts":%b,"s":"%b","d":%b}' % (
            names[0],
            repr(timestamp).encode(),
            self._sid,
            data,
        )
        if len(payload) > self._max_bytes:
            raise EventTooLargeError(len(payload), self._max_bytes)
        self._seq += 1
        if self.sink is not None:
            cursor = b"id: %b-%d\n" % (self._epoch_b, self._seq)
            self.sink.put(cursor + names[1] + data + b"\n\n")
        if not self._history_failed:
            self._history.append(payload)
            self._wake_writer.set()

    async def _room(self) -> None:
        await asyncio.sleep(0)  # let the client's writer and the history writer run
        if self.sink is not None:
            await self.sink.room()
        while len(self._history) > _HISTORY_HIGH and not self._history_failed:
            self._writer_room.clear()
            await self._writer_room.wait()

    # --- the history writer ---------------------------------------------------------------

    async def _write(self, opened: asyncio.Future[None]) -> None:
        try:
            await opened
        except Exception:  # logged by `_finish`; the client still gets every event
            self._history_failed = True
            self._history.clear()
            self._writer_room.set()
            return
        expected = self._seq - len(self._history) + 1
        while True:
            if not self._history:
                if self._ended or self._history_failed:
                    return
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            flight: list[Batch] = []
            while self._history and len(flight) < _FLIGHT:
                events = self._history[:_BATCH]
                del self._history[:_BATCH]
                final = self._final if self._ended and not self._history else None
                self._batches += 1
                mark = ProducerMark(self._producer_id, self._batches)
                flight.append(Batch(self.stream_id, events, final, mark))
            if len(self._history) <= _HISTORY_HIGH:
                self._writer_room.set()
            try:
                firsts = await write_flight(self._writer, self._backend, flight)
            except StreamClosedError:
                log.warning("stream %s ended elsewhere; generation stops", self.stream_id)
                self.stop("closed")
                firsts = None
            if firsts is None:
                self._history_failed = True
                self._history.clear()
                self._writer_room.set()
                return
            for batch, stored in zip(flight, firsts, strict=True):
                if stored is not None and stored != expected:
                    log.warning(
                        "stream %s: history numbered %d, the client saw %d (another producer?)",
                        self.stream_id,
                        stored,
                        expected,
                    )
                first = expected if stored is None else stored
                if batch.final_state is not None:  # stored (None: its answer was lost)
                    self._final_stored = True
                sink = self._channel.sink
                if sink is not None:
                    for offset, payload in enumerate(batch.payloads):
                        sink(self.stream_id, self._epoch, first + offset, payload)
                expected = first + len(batch.payloads)

    # --- heartbeat, cancel flag and grace -------------------------------------------------

    async def _grace(self) -> None:
        """While the first client is gone: stop once nobody followed for ``resume_grace``."""
        loop = asyncio.get_running_loop()
        every = min(PRESENCE_POLL, max(CANCEL_POLL, self.resume_grace / 4))
        while self._generating:
            await asyncio.sleep(every)
            try:
                followers = await self._backend.followers(self.stream_id)
            except BackendUnavailableError as exc:
                log.debug("stream %s: follower count failed: %r", self.stream_id, exc)
                continue
            self._check_grace(loop.time(), followers)

    def _check_grace(self, now: float, followers: int) -> None:
        if followers:
            self._alone_since = now  # the grace starts again when the last follower leaves
        elif self._held:
            return  # the drain's deadline ends it
        elif self._alone_since is not None and now - self._alone_since >= self.resume_grace:
            self.stop("abandoned")

    # --- the shutdown drain (a `DrainTarget` for as long as the generator runs) -----------

    def begin_drain(self) -> None:
        """With a shared history (Redis), the client resumes on another process: generation
        goes on, abandoned or not, until the drain deadline. In memory, as a direct stream."""
        self._held = self.shared

    async def cut_for_shutdown(self) -> None:
        """The drain deadline passed: end the stream with ``error {reason: "shutdown"}``."""
        self.stop("shutdown")
        await self.done.wait()
