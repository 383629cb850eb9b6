"""`SyncStreamChannel`: thread-safe publishing into an `AsyncStreamChannel` from worker threads."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..events import ServerSentEventLike, StreamEvent
    from .base import StreamMeta
    from .stream import AsyncStreamChannel

__all__ = ["SyncStreamChannel"]


class SyncStreamChannel:
    """The seed's ``SyncStreamChannel``: call it from any thread; each call blocks until the
    event loop that owns ``channel`` has accepted the event (or ``timeout`` passed).

    Worker processes without that loop use `SyncRedisChannel` with a plain Redis client.
    """

    def __init__(
        self, channel: AsyncStreamChannel, loop: asyncio.AbstractEventLoop, *, timeout: float = 30
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        self._loop = loop

    def create(self, stream_id: str, *, owner: str | None = None) -> StreamMeta:
        coro = self.channel.create(stream_id, owner=owner)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def publish(self, stream_id: str, event: StreamEvent | ServerSentEventLike) -> int:
        coro = self.channel.publish(stream_id, event)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)
