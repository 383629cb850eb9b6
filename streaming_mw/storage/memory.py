"""In-process event storage: for development, tests, and ``enable_storage`` without OpenSearch."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from .base import order_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..events import StreamEvent

__all__ = ["MemoryEventStorage"]


class MemoryEventStorage:
    """Keeps every event in lists (bounded by ``max_events``, oldest dropped)."""

    def __init__(self, max_events: int = 1_000_000) -> None:
        self.max_events = max_events
        self._events: list[StreamEvent] = []
        self._by_stream: dict[str | None, list[StreamEvent]] = defaultdict(list)

    async def append(self, events: Sequence[StreamEvent]) -> None:
        for event in events:
            self._events.append(event)
            self._by_stream[event.stream_id].append(event)
        overflow = len(self._events) - self.max_events
        if overflow > 0:
            for event in self._events[:overflow]:
                self._by_stream[event.stream_id].remove(event)
            del self._events[:overflow]

    async def get_events(self, stream_id: str) -> list[StreamEvent]:
        return sorted(self._by_stream.get(stream_id, ()), key=order_key)

    def _match(
        self,
        start: float | None,
        end: float | None,
        types: Sequence[str] | None,
        stream_id: str | None,
    ) -> list[StreamEvent]:
        pool = self._events if stream_id is None else self._by_stream.get(stream_id, [])
        wanted = set(types) if types else None
        return sorted(
            (
                e
                for e in pool
                if (start is None or e.timestamp >= start)
                and (end is None or e.timestamp < end)
                and (wanted is None or e.type in wanted)
            ),
            key=lambda e: e.timestamp,
        )

    async def query(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        types: Sequence[str] | None = None,
        stream_id: str | None = None,
        limit: int = 1000,
    ) -> list[StreamEvent]:
        return self._match(start, end, types, stream_id)[:limit]

    async def count(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        types: Sequence[str] | None = None,
        stream_id: str | None = None,
    ) -> int:
        return len(self._match(start, end, types, stream_id))

    async def aclose(self) -> None:
        """Nothing to release."""
