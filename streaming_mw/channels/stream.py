"""`AsyncStreamChannel`: events in, `Follower` out — lossless replay then live, over any backend.

Following a stream (DESIGN §3): subscribe first (live notifications buffer), read the meta,
place the cursor, replay retained history after it page by page, then deliver live events,
dropping any ``seq`` already delivered and filling any ``seq`` that skips ahead from history.
A cursor that cannot be honoured is answered in-band with a ``reset`` event first.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal, TypeAlias

from .._types import check_user_id, validate_stream_id
from ..errors import InvalidCursorError, StreamNotFoundError
from ..events import Cursor, EventType, StreamEvent, as_stream_event
from .base import Notice, NowaitAppending, QueueSubscription, StreamState, ThreadAppending
from .shared import SharedEvents

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from ..config import ChannelConfig
    from ..events import ServerSentEventLike
    from .base import ChannelBackend, ProducerMark, StreamMeta, Subscription

__all__ = ["AsyncStreamChannel", "Follower", "ResetReason", "final_state_of"]

ResetReason: TypeAlias = Literal["expired", "unknown", "epoch_changed"]

_PAGE = 500


def final_state_of(event: StreamEvent) -> StreamState | None:
    """The state a stream ends in after ``event``, or None if the event is not terminal."""
    if event.type == EventType.COMPLETE:
        return StreamState.DONE
    if event.type == EventType.ERROR:
        cancelled = isinstance(event.data, dict) and event.data.get("reason") == "cancelled"
        return StreamState.CANCELLED if cancelled else StreamState.ERROR
    return None


class AsyncStreamChannel:
    """Publishing and following streams on the event loop (seed: ``AsyncStreamChannel``)."""

    def __init__(self, backend: ChannelBackend, config: ChannelConfig) -> None:
        self.backend = backend
        self.config = config
        self.sink: Callable[[str, str | None, int, bytes], None] | None = None
        """Called with every appended event (event storage); must not block."""
        self.shared = SharedEvents(max_bytes=config.shared_cache_bytes)
        self._nowait = backend if isinstance(backend, NowaitAppending) else None
        self._threaded = backend if isinstance(backend, ThreadAppending) else None

    async def create(
        self, stream_id: str, *, owner: str | None = None, job_id: str | None = None
    ) -> StreamMeta:
        """Create ``stream_id`` if it does not exist yet; return its meta.

        ``owner`` (a user id: non-empty, at most 256 characters, else `InvalidUserIdError`, in
        every backend alike) restricts who may follow it; None makes a public stream.
        """
        if owner is not None:
            check_user_id(owner)
        return await self.backend.create(validate_stream_id(stream_id), owner=owner, job_id=job_id)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        """The stream's meta, or None."""
        return await self.backend.meta(validate_stream_id(stream_id))

    def encode(self, event: StreamEvent) -> bytes:
        """``event``'s payload; raises `InvalidEventError` / `EventTooLargeError` at once."""
        return event.to_bytes(max_bytes=self.config.max_event_bytes)

    async def publish(
        self,
        stream_id: str,
        event: StreamEvent | ServerSentEventLike,
        *,
        producer: ProducerMark | None = None,
    ) -> int:
        """Append ``event`` (checked against ``max_event_bytes``) and return its ``seq``;
        FastAPI's ``ServerSentEvent`` is converted by `as_stream_event`."""
        event = as_stream_event(event)
        return await self.append(
            stream_id, self.encode(event), final_state_of(event), producer=producer
        )

    async def append(
        self,
        stream_id: str,
        payload: bytes,
        final_state: StreamState | None = None,
        *,
        epoch: str | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        """Append an encoded event (see `encode`) and return its ``seq``; ``epoch`` (the
        publisher's) lets storage record the full ``<epoch>-<seq>`` id; ``producer`` makes a
        retry of the same append safe (`ProducerMark`)."""
        seq = await self.backend.append(
            stream_id, payload, final_state=final_state, producer=producer
        )
        if self.sink is not None:
            self.sink(stream_id, epoch, seq, payload)
        return seq

    def append_nowait(
        self,
        stream_id: str,
        payload: bytes,
        final_state: StreamState | None = None,
        *,
        epoch: str | None = None,
        producer: ProducerMark | None = None,
    ) -> int | None:
        """`append` done at once on the loop, or None (nothing done) when the backend cannot
        append without waiting (`NowaitAppending`)."""
        backend = self._nowait
        if backend is None:
            return None
        seq = backend.append_nowait(stream_id, payload, final_state=final_state, producer=producer)
        if self.sink is not None:
            self.sink(stream_id, epoch, seq, payload)
        return seq

    def append_from_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        stream_id: str,
        payload: bytes,
        final_state: StreamState | None = None,
        *,
        epoch: str | None = None,
        producer: ProducerMark | None = None,
    ) -> int | None:
        """`append` from a worker thread, blocking it, without the event loop ``loop`` (which
        owns this channel and gets the storage sink's call); None (nothing done) when the
        backend cannot (`ThreadAppending`)."""
        backend = self._threaded
        if backend is None:
            return None
        seq = backend.append_from_thread(
            stream_id, payload, final_state=final_state, producer=producer
        )
        if seq is not None and self.sink is not None:
            loop.call_soon_threadsafe(self.sink, stream_id, epoch, seq, payload)
        return seq

    async def follow(self, stream_id: str, last_event_id: str | None = None) -> Follower:
        """Follow ``stream_id`` strictly after ``last_event_id`` (from its start if None).

        Raises `StreamNotFoundError`; a malformed, foreign or expired cursor is answered with a
        ``reset`` event, never an exception.
        """
        validate_stream_id(stream_id)
        subscription = await self.backend.subscribe(stream_id)
        meta = await self.backend.meta(stream_id)
        if meta is None:
            subscription.close()
            raise StreamNotFoundError(stream_id)
        follower = Follower(self, meta, subscription)
        follower.place(last_event_id)
        return follower


class Follower:
    """One client's view of one stream: `next` yields each event once, in order."""

    # Slots: one lives as long as each open stream (an instance dict's values were 60 bytes more).
    # fmt: off
    __slots__ = (
        "_announced", "_backend", "_channel", "_done", "_epoch", "_history_done", "_last",
        "_lost", "_meta", "_pending", "_resyncing", "_shared", "_subscription", "job_id",
        "owner", "resumed_from", "stream_id",
    )
    # fmt: on

    def __init__(
        self, channel: AsyncStreamChannel, meta: StreamMeta, subscription: Subscription
    ) -> None:
        self.stream_id = meta.stream_id
        self.owner = meta.owner
        self.job_id = meta.job_id
        self.resumed_from: str | None = None
        self._channel = channel
        self._shared = channel.shared
        self._backend = channel.backend
        self._meta: StreamMeta | None = meta  # until `place` (then only the epoch counts)
        self._epoch = sys.intern(meta.epoch)  # one string for the stream's followers, not one each
        self._subscription = subscription
        self._pending: list[StreamEvent] = []  # not a deque: 56 bytes idle, not 624
        self._last = 0
        self._history_done = False
        self._done = False
        self._lost = False
        self._announced = False
        self._resyncing = False  # `_resync` awaits the meta: `offer` must not move the cursor

    @property
    def finished(self) -> bool:
        """The terminal event has been handed out."""
        return self._done and not self._pending

    def place(self, last_event_id: str | None) -> None:
        """Position after ``last_event_id``; queue a ``reset`` if it cannot be honoured.

        A follower placed at the stream's head needs no history: it subscribed before reading
        the meta, so every later event reaches it live (however fast they come, even past the
        retained history), and a gap would still be filled from history."""
        meta, self._meta = self._meta, None  # not kept: 100 bytes for each idle follower
        if meta is None:
            raise RuntimeError("a follower is placed once")
        if last_event_id is None or last_event_id == "":
            self._history_done = meta.last_seq == 0
            return
        try:
            cursor = Cursor.parse(last_event_id)
        except InvalidCursorError:
            self.resumed_from = "invalid"  # never the raw header: it is the client's, unbounded
            self._reset("unknown")
            return
        self.resumed_from = str(cursor)
        if cursor.epoch != meta.epoch:
            self._reset("epoch_changed")
        elif cursor.seq > meta.last_seq:
            self._reset("unknown")
        elif cursor.seq < meta.last_seq and not 0 < meta.first_seq <= cursor.seq + 1:
            self._reset("expired")  # the next event it needs was trimmed
        else:
            self._last = cursor.seq
            if cursor.seq == meta.last_seq:
                self._history_done = True
                self._done = meta.ended  # it has the terminal event: nothing more will come

    def _reset(self, reason: ResetReason) -> None:
        self._last = 0
        self._announced = True  # the client knows it starts over: no second reset for this
        self._pending.append(StreamEvent(EventType.RESET, {"reason": reason}, None, self.stream_id))

    async def next(self, wait: float | None) -> StreamEvent | None:
        """The next event, or None if none came within ``wait`` seconds."""
        while not self._pending:
            if self._done:
                return None
            if not self._history_done:
                await self._load_page()
                continue
            item = await self._subscription.get(wait)
            if item is None:
                return None
            if not isinstance(item, Notice):
                await self._resync()
                continue
            epoch, seq, payload = item
            if self._lost or epoch != self._epoch:
                await self._resync()  # a new incarnation: learn its epoch, replay from history
                continue
            if seq <= self._last:
                continue  # already delivered from history
            if seq > self._last + 1:
                self._history_done = False  # a gap: fill it from history first
                continue
            self._take(seq, payload)
        return self._pending.pop(0)

    def offer(self, notice: Notice) -> tuple[StreamEvent, bytes] | None:
        """Take ``notice`` now if it is this caught-up follower's next event and not its last:
        the event and its frame, for the caller to send. None: it has to come through `next`.
        The follower counts it as handed out only once both are made (nothing raises after)."""
        if self._pending or self._done or self._lost or self._resyncing or not self._history_done:
            return None
        epoch, seq, payload = notice
        if seq != self._last + 1 or epoch != self._epoch:
            return None
        event = self._shared.event(self.stream_id, f"{epoch}-{seq}", payload)
        if event.is_terminal:
            return None  # the end of the stream goes the reader's way, which ends it
        frame = self._shared.frame(self.stream_id, event)
        self._last = seq
        return event, frame

    def idle_wait(self, wait: float | None) -> asyncio.Future[None] | None:
        """When all this follower can do is wait for its next notice (caught up, nothing
        pending), the future of that wait, at most ``wait`` seconds: await it, then pass
        `end_wait`'s answer to `next`. None when `next` has work to do at once.

        A reader that waits this way keeps no coroutine of `next` and of the subscription
        alive while the stream is idle: about 500 bytes for each idle follower."""
        subscription = self._subscription
        if (
            self._pending
            or self._done
            or not self._history_done
            or not isinstance(subscription, QueueSubscription)
        ):
            return None
        return subscription.arm(wait)

    def end_wait(self) -> float | None:
        """After `idle_wait`'s future (done or cancelled): the wait left for `next`, 0 when
        the time was up or the wait interrupted."""
        subscription = self._subscription
        if isinstance(subscription, QueueSubscription):
            return subscription.disarm()
        return 0.0

    def set_sink(self, sink: Callable[[Notice], bool] | None) -> None:
        """Have live notices offered to ``sink`` while `next` waits (None: stop)."""
        if isinstance(self._subscription, QueueSubscription):
            self._subscription.sink = sink

    def interrupt(self) -> None:
        """End a wait of `next` under way now: it returns None."""
        if isinstance(self._subscription, QueueSubscription):
            self._subscription.interrupt()

    @property
    def replaying(self) -> bool:
        """Events come from history (a replay or a gap being filled), not live."""
        return not self._history_done

    def frame(self, event: StreamEvent) -> bytes:
        """``event`` (one this follower handed out) as an SSE frame, encoded once per process."""
        return self._shared.frame(self.stream_id, event)

    def ready(self) -> StreamEvent | None:
        """The next event if one is ready now, without waiting."""
        return self._pending.pop(0) if self._pending else None

    async def _load_page(self) -> None:
        page = await self._backend.read(self.stream_id, self._last, _PAGE)
        if page and page[0][0] > self._last + 1 and not (self._last == 0 and self._announced):
            self._reset("expired")  # what it needs next was trimmed
        for seq, payload in page:
            if not self._done:
                self._take(seq, payload)
        if len(page) < _PAGE or self._done:
            self._history_done = True

    async def _resync(self) -> None:
        # Live events taken meanwhile would be past the meta read here, and look like a stream
        # that went back (a `reset`): they wait in the queue until the resync is done.
        self._resyncing = True
        try:
            meta = await self._backend.meta(self.stream_id)
        finally:
            self._resyncing = False
        if meta is None:
            self._lost = True  # gone (Redis lost its data); a producer may re-create it
            return
        self._lost = False
        if meta.epoch != self._epoch:
            self._epoch = sys.intern(meta.epoch)
            self._reset("epoch_changed")
        elif meta.last_seq < self._last:
            # The stream went back: a promoted replica missed events its master acknowledged,
            # and the next appends reuse their numbers. Start over, as for a cursor beyond the
            # stream's end.
            self._reset("unknown")
        self._history_done = False

    def _take(self, seq: int, payload: bytes) -> None:
        event = self._shared.event(self.stream_id, f"{self._epoch}-{seq}", payload)
        self._last = seq
        self._pending.append(event)
        if event.is_terminal:
            self._done = True

    def aclose(self) -> None:
        """Stop following (idempotent)."""
        self._subscription.close()
