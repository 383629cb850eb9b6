"""The `ChannelBackend` contract: per-stream history plus live notification, in bytes.

A backend stores each stream's events as opaque payloads numbered ``seq`` = 1, 2, 3 … and tells
live subscribers about each append. It never looks inside a payload; `AsyncStreamChannel`
turns payloads into `StreamEvent` objects and cursors.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, runtime_checkable

from ..errors import SlowConsumerError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "RESYNC",
    "ChannelBackend",
    "Notice",
    "QueueSubscription",
    "Resync",
    "StreamMeta",
    "StreamState",
    "Subscription",
]


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

    async def get(self) -> Notice | Resync:
        """The next notification; waits for one."""
        ...

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        ...


class _Overflow:
    __slots__ = ()


_OVERFLOW: Final = _Overflow()


class QueueSubscription:
    """A `Subscription` on a bounded asyncio queue, shared by the backends.

    When the queue is full the subscriber is cut off: it is detached (``on_close``), its backlog
    is dropped and every later `get` raises `SlowConsumerError`. The publisher never waits.
    """

    def __init__(self, maxsize: int, on_close: Callable[[QueueSubscription], None]) -> None:
        self._queue: asyncio.Queue[Notice | Resync | _Overflow] = asyncio.Queue(maxsize)
        self._on_close = on_close
        self._closed = False

    def deliver(self, item: Notice | Resync) -> None:
        """Queue ``item`` without waiting; cut the subscriber off if it cannot take it."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.close()
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_OVERFLOW)

    async def get(self) -> Notice | Resync:
        item = await self._queue.get()
        if isinstance(item, _Overflow):
            self._queue.put_nowait(item)  # every later get fails alike
            raise SlowConsumerError("follower fell too far behind; resume from its cursor")
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)


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
        self, stream_id: str, payload: bytes, *, final_state: StreamState | None = None
    ) -> int:
        """Append one event and notify subscribers; return its ``seq``.

        ``final_state`` marks the event terminal: the stream moves to that state and its history
        expires after the configured TTL. Raises `StreamNotFoundError` for an unknown stream and
        `StreamClosedError` once the stream has ended.
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
