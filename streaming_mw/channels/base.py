"""The `ChannelBackend` contract: per-stream history plus live notification, in bytes.

A backend stores each stream's events as opaque payloads numbered ``seq`` = 1, 2, 3 … and tells
live subscribers about each append. It never looks inside a payload; `AsyncStreamChannel`
turns payloads into `StreamEvent` objects and cursors.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, runtime_checkable

from ..errors import SlowConsumerError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .waits import SharedDeadlines

__all__ = [
    "RESYNC",
    "ChannelBackend",
    "Notice",
    "NowaitAppending",
    "ProducerMark",
    "QueueSubscription",
    "Resync",
    "StreamMeta",
    "StreamState",
    "Subscription",
    "ThreadAppending",
]

log = logging.getLogger("streaming_mw.channels")


class StreamState(StrEnum):
    """Where a stream is in its life."""

    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """What a backend knows of one stream.

    ``epoch`` is random per incarnation of the stream id; ``last_seq`` is the newest event's
    number (0 before the first); ``first_seq`` the oldest still retained (0 when none is).
    """

    stream_id: str
    epoch: str
    state: StreamState
    created_at: float
    last_seq: int = 0
    first_seq: int = 0
    owner: str | None = None
    job_id: str | None = None

    @property
    def ended(self) -> bool:
        return self.state is not StreamState.RUNNING


@dataclass(frozen=True, slots=True)
class ProducerMark:
    """Which producer an append comes from, and its number in that producer's sequence.

    Appends are idempotent per producer: an append whose mark equals the last one the backend
    applied for ``producer_id`` is not applied again and returns that append's ``seq``. A retry
    after a timeout (the command may have reached Redis and run later) therefore never stores
    an event twice. A producer numbers its appends 1, 2, 3 … and sends one at a time.
    """

    producer_id: str
    seq: int


class Notice(NamedTuple):
    """A live notification: event ``seq`` of the stream incarnation ``epoch``."""

    epoch: str
    seq: int
    payload: bytes


class Resync:
    """Queued to subscribers when live delivery may have missed events (a reconnect)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()


@runtime_checkable
class Subscription(Protocol):
    """Live notifications of one stream, from the moment `ChannelBackend.subscribe` returned.

    Items are `Notice` or `RESYNC`. The queue is bounded: a subscriber that does
    not keep up is cut off, and `get` raises `SlowConsumerError`.
    """

    async def get(self, wait: float | None = None) -> Notice | Resync | None:
        """The next notification; waits for one, or returns None after ``wait`` seconds."""
        ...

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        ...


class QueueSubscription:
    """A `Subscription` on a bounded queue, shared by the backends.

    When the queue is full the subscriber is cut off: it is detached (``on_close``), its backlog
    is dropped and every later `get` raises `SlowConsumerError`. The publisher never waits.

    Waiting with a timeout costs no timer per notification. Given ``deadlines``, the waits of
    all the backend's subscriptions share one timer (`SharedDeadlines`: a wait ends at most
    10 ms late); alone, a subscription has one timer, re-armed only when it fires before the
    current deadline (with thousands of followers, a timer armed and cancelled per event was a
    tenth of the fan-out's time, and one timer each a sixth of it).

    While its reader waits with nothing queued, a notice can go to ``sink`` instead (a caught-up
    follower's writer, see `EventStreamResponse`): when the sink takes it, the reader is not
    woken, and the event costs no task step, no coroutine and no future. A notice the sink
    takes restarts the wait's clock: a timed `get` returns None after ``wait`` seconds with
    no notice at all, taken or not.
    """

    # Slots: one lives as long as each open stream (an instance dict's values were 60 bytes more).
    # fmt: off
    __slots__ = (
        "_bytes", "_closed", "_deadline", "_deadlines", "_interrupted", "_items", "_max_bytes",
        "_maxsize", "_on_close", "_overflow", "_sinking", "_timed_out", "_timer", "_wait",
        "_waiter", "key", "sink",
    )
    # fmt: on

    def __init__(
        self,
        maxsize: int,
        on_close: Callable[[QueueSubscription], None],
        *,
        max_bytes: int | None = None,
        key: bytes = b"",
        deadlines: SharedDeadlines | None = None,
    ) -> None:
        self.key = key
        """The channel it follows, for ``on_close`` (the fan-out's)."""
        self.sink: Callable[[Notice], bool] | None = None
        """Offered each notice while nothing is queued; True when it took it (it must not
        raise). Set by the reader around its waits."""
        self._deadlines = deadlines  # shared with the backend's other subscriptions
        # A list, not a deque: an idle follower's empty deque is 624 bytes, a list 56.
        self._items: list[Notice | Resync] = []
        self._maxsize = maxsize
        self._max_bytes = max_bytes if max_bytes is not None else math.inf
        self._bytes = 0  # payload bytes queued: a reader that stops cannot pin more
        self._on_close = on_close
        self._closed = False
        self._overflow = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._wait = 0.0  # the length of the timed wait under way
        self._interrupted = False  # `interrupt` came between two waits
        self._sinking = True  # False once ``sink`` raised
        self._timed_out = False

    def deliver(self, item: Notice | Resync) -> None:
        """Queue ``item`` without waiting; cut the subscriber off if it cannot take it."""
        if self._overflow:
            return
        sink = self.sink
        if sink is not None and not self._items and type(item) is Notice and self._sinking:
            try:
                taken = sink(item)
            except Exception:  # a bug: never the publisher's nor the other followers' problem
                log.exception("a live write failed; this follower's events go its own way")
                self._sinking = taken = False  # for good: not a traceback per event
            if taken:
                if self._waiter is not None and self._deadline != math.inf:
                    self._deadline = asyncio.get_running_loop().time() + self._wait
                return
        size = len(item.payload) if isinstance(item, Notice) else 0
        if len(self._items) >= self._maxsize or self._bytes + size > self._max_bytes:
            self.close()
            self._items.clear()
            self._bytes = 0
            self._overflow = True
        else:
            self._items.append(item)
            self._bytes += size
        self._wake()

    async def get(self, wait: float | None = None) -> Notice | Resync | None:
        while not self._items:
            if self._overflow:
                raise SlowConsumerError("follower fell too far behind; resume from its cursor")
            waiter = self.arm(wait)
            if waiter is None:
                self._interrupted = False
                return None
            try:
                await waiter
            finally:
                self._waiter = None
            if self._timed_out and not self._items:
                return None
        if self._overflow:
            raise SlowConsumerError("follower fell too far behind; resume from its cursor")
        item = self._items.pop(0)
        if isinstance(item, Notice):
            self._bytes -= len(item.payload)
        return item

    def arm(self, wait: float | None) -> asyncio.Future[None] | None:
        """Start a wait of at most ``wait`` seconds (None: no limit) and return its future,
        done when a notice is queued, the time is up or `interrupt` came; the caller awaits
        it, then calls `disarm`. None when there is nothing to wait for: a notice is queued,
        the subscriber was cut off or interrupted, or ``wait`` is not positive (`get` tells
        which). `get` waits this way; a reader that awaits the future itself keeps no
        coroutine alive while it waits."""
        if self._items or self._overflow or self._interrupted:
            return None
        loop = asyncio.get_running_loop()
        if wait is None:
            self._deadline = math.inf  # a timer still armed for an earlier get re-arms
        elif wait <= 0:
            return None
        elif self._deadlines is not None:
            self._wait = wait
            self._deadline = loop.time() + wait
            self._deadlines.add(self, self._deadline, loop)
        else:
            self._wait = wait
            self._deadline = loop.time() + wait
            if self._timer is not None and self._timer.when() > self._deadline:
                self._timer.cancel()  # armed for a longer wait than this one
                self._timer = None
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._on_timer, loop)
        self._timed_out = False
        self._waiter = waiter = loop.create_future()
        return waiter

    def disarm(self) -> float | None:
        """The wait `arm` started is over (its future done or cancelled). Returns the time it
        had left, for a `get` to go on with: 0 when it timed out or was interrupted, None for
        no limit."""
        self._waiter = None
        if self._timed_out:
            return 0.0
        if self._deadline == math.inf:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def interrupt(self) -> None:
        """End the wait under way, or else the next one, at once: `get` returns None (unless a
        notice is queued), as if its time were up."""
        if self._waiter is not None:
            self._timed_out = True
            self._wake()
        else:
            self._interrupted = True

    def expire(self, now: float) -> float | None:
        """`SharedDeadlines`: end a wait whose deadline has passed; the later deadline of a
        wait still running, else None."""
        if self._waiter is None:
            return None  # not waiting: its next timed `get` adds itself again
        if now >= self._deadline:
            self._timed_out = True
            self._wake()
            return None
        return self._deadline if self._deadline != math.inf else None

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._waiter is None:
            return  # nobody waits: the next timed `get` arms a timer again
        if loop.time() >= self._deadline:
            self._timed_out = True
            self._wake()
        elif self._deadline != math.inf:  # the deadline moved on since this timer was armed
            self._timer = loop.call_at(self._deadline, self._on_timer, loop)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed:
            self._closed = True
            self._on_close(self)


@runtime_checkable
class NowaitAppending(Protocol):
    """A backend that appends without waiting (one living on the event loop, like memory):
    publishing from a worker thread then needs no task, only a callback on the loop."""

    def append_nowait(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        """`ChannelBackend.append`, done before it returns."""
        ...


@runtime_checkable
class ThreadAppending(Protocol):
    """A backend that can append from a worker thread, blocking that thread, without the event
    loop (Redis, with a synchronous client)."""

    def append_from_thread(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int | None:
        """`ChannelBackend.append` in the calling thread; None (nothing done) when not enabled."""
        ...


@runtime_checkable
class ChannelBackend(Protocol):
    """Storage and live fan-out of stream events, in bytes."""

    async def create(
        self, stream_id: str, *, owner: str | None = None, job_id: str | None = None
    ) -> StreamMeta:
        """Create the stream if it does not exist; return its meta either way. ``job_id`` names
        the queued job that will publish to it."""
        ...

    async def meta(self, stream_id: str) -> StreamMeta | None:
        """The stream's meta, or ``None`` if there is no such stream."""
        ...

    async def append(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        """Append one event and notify subscribers; return its ``seq``.

        ``final_state`` marks the event terminal: the stream moves to that state and its history
        expires after the configured TTL. With ``producer``, a repeat of the producer's last
        append is not applied again and returns its ``seq`` (see `ProducerMark`). Raises
        `StreamNotFoundError` for an unknown stream and `StreamClosedError` once the stream has
        ended.
        """
        ...

    async def read(self, stream_id: str, after_seq: int, limit: int) -> Sequence[tuple[int, bytes]]:
        """Up to ``limit`` retained events with ``seq > after_seq``, oldest first."""
        ...

    async def subscribe(self, stream_id: str) -> Subscription:
        """Start receiving live notifications; every append after this returns is delivered."""
        ...

    async def aclose(self) -> None:
        """Stop background work and drop subscribers."""
        ...
