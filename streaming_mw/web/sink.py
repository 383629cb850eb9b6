"""What a resumable stream's producer hands its first client, and the events it makes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, TypeAlias

from ..errors import InvalidEventError
from ..events import EventType, ServerSentEventLike, StreamEvent, as_stream_event

if TYPE_CHECKING:
    from .._types import JSONValue

__all__ = ["SINK_HIGH", "DirectSink", "Item", "as_event", "complete_event", "error_event"]

Item: TypeAlias = "StreamEvent | ServerSentEventLike | str | dict[str, JSONValue]"
"""What a resumable source yields: a `StreamEvent`, FastAPI's ``ServerSentEvent``
(`as_stream_event`), a ``str`` (``token {"token": …}``) or a ``dict`` (``message {…}``)."""

SINK_HIGH: Final = 1 << 20
"""Bytes waiting for the first client before the generator waits for it."""


def as_event(item: object) -> StreamEvent:
    """``item`` as a `StreamEvent` (see `Item`); anything else raises `InvalidEventError`."""
    if isinstance(item, StreamEvent):
        return item
    if isinstance(item, str):
        return StreamEvent("token", {"token": item})
    if isinstance(item, dict):
        return StreamEvent("message", item)
    if isinstance(item, ServerSentEventLike):
        return as_stream_event(item)
    raise InvalidEventError(
        f"a resumable source yields StreamEvent, ServerSentEvent, str or dict, not {item!r}"
    )


class DirectSink:
    """Frames waiting for the first client, handed over without a backend in between."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.size = 0
        self.finished = False
        self.gone = False
        self.interrupted = False
        self._ready: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None

    def put(self, frame: bytes) -> None:
        if self.gone:
            return
        self.frames.append(frame)
        self.size += len(frame)
        _wake(self._ready)

    def finish(self) -> None:
        self.finished = True
        _wake(self._ready)

    def interrupt(self) -> None:
        """Make `take` return None once the frames ready now are taken (the client is sent
        elsewhere: the process drains)."""
        self.interrupted = True
        _wake(self._ready)

    def leave(self) -> None:
        self.gone = True
        self.frames.clear()
        self.size = 0
        _wake(self._space)

    def take_ready(self) -> bytes:
        """Every frame ready now, as one chunk (``b""`` for none), without waiting."""
        chunk = b"".join(self.frames)
        self.frames.clear()
        self.size = 0
        _wake(self._space)
        return chunk

    async def take(self) -> bytes | None:
        """Every frame ready, as one chunk; None once the stream has ended."""
        while not self.frames:
            if self.finished or self.interrupted:
                return None
            self._ready = asyncio.get_running_loop().create_future()
            await self._ready
        return self.take_ready()

    async def room(self) -> None:
        """Wait while the client is more than ``SINK_HIGH`` bytes behind."""
        while self.size > SINK_HIGH and not self.gone:
            self._space = asyncio.get_running_loop().create_future()
            await self._space


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def complete_event(**data: JSONValue) -> StreamEvent:
    return StreamEvent(EventType.COMPLETE, data)


def error_event(message: str, **details: JSONValue) -> StreamEvent:
    return StreamEvent(EventType.ERROR, {**details, "message": message})
