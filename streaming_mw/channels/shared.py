"""`SharedEvents`: each delivered event decoded and framed once per process."""

from __future__ import annotations

from ..events import StreamEvent
from ..sse import encode_stream_event

__all__ = ["SharedEvents"]

_SHARED = 1024
"""Recently delivered events kept decoded and framed for every follower of this process."""


class SharedEvents:
    """Decode and frame each delivered event once per process, not once per follower: the
    thousand followers of one stream receive the same payload, and build the same event and
    the same bytes from it. An ``(epoch, seq)`` names one event unless a failover lost it and
    the number was given again, so a hit counts only with the same payload.

    Bounded in count and in bytes: an entry costs twice its payload (the payload and the
    decoded event) plus its frame once built; the oldest entries go first, and an event over an
    eighth of the budget is decoded for its follower without being kept.
    """

    def __init__(self, size: int = _SHARED, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: dict[tuple[str, str], tuple[StreamEvent, bytes | None, bytes, int]] = {}

    def event(self, stream_id: str, event_id: str, payload: bytes) -> StreamEvent:
        key = (stream_id, event_id)
        found = self._items.get(key)
        if found is not None and (found[2] is payload or found[2] == payload):
            return found[0]
        event = StreamEvent.from_bytes(payload, event_id=event_id)
        cost = 2 * len(payload)
        if cost * 8 > self._max_bytes:
            return event  # too large to share: it would push out everything else
        if found is not None:
            self._bytes -= found[3]  # a number given again after a failover: replace it
        self._items[key] = (event, None, payload, cost)
        self._bytes += cost
        self._evict()
        return event

    def frame(self, stream_id: str, event: StreamEvent) -> bytes:
        key = (stream_id, event.id or "")
        found = self._items.get(key)
        if found is None or found[0] is not event:
            return encode_stream_event(event)  # not one of ours (a reset), or already evicted
        frame = found[1]
        if frame is None:
            frame = encode_stream_event(event)
            self._items[key] = (event, frame, found[2], found[3] + len(frame))
            self._bytes += len(frame)
            self._evict()
        return frame

    def _evict(self) -> None:
        items = self._items
        while items and (len(items) > self._size or self._bytes > self._max_bytes):
            oldest = next(iter(items))
            self._bytes -= items.pop(oldest)[3]

    @property
    def nbytes(self) -> int:
        """The bytes the kept entries are counted at."""
        return self._bytes
