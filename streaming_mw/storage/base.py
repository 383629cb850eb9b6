"""The `EventStorage` contract: durable, queryable history of stream events (seed: storage.py).

Storage is optional and never in the way of delivery: events reach it through `StorageWriter`
(a bounded buffer flushed in batches by a background task), so a slow, failing or absent store
never delays or breaks a stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..events import StreamEvent

__all__ = ["EventStorage", "order_key"]


def order_key(event: StreamEvent) -> tuple[float, float]:
    """Events of one stream in publication order: by their ``seq``, then time."""
    seq = 0
    if event.id:
        tail = event.id.rpartition("-")[2]
        seq = int(tail) if tail.isdigit() else 0
    return (seq, event.timestamp) if seq else (float("inf"), event.timestamp)


@runtime_checkable
class EventStorage(Protocol):
    """Where stored events go. Implementations: memory, OpenSearch."""

    async def append(self, events: Sequence[StreamEvent]) -> None:
        """Store a batch of events (each with ``stream_id`` and, for stream events, ``id``)."""
        ...

    async def get_events(self, stream_id: str) -> list[StreamEvent]:
        """Every stored event of ``stream_id``, in publication order."""
        ...

    async def query(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        types: Sequence[str] | None = None,
        stream_id: str | None = None,
        limit: int = 1000,
    ) -> list[StreamEvent]:
        """Events with ``start <= timestamp < end`` (Unix seconds), of the given types, oldest
        first, at most ``limit``."""
        ...

    async def count(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        types: Sequence[str] | None = None,
        stream_id: str | None = None,
    ) -> int:
        """How many events `query` would match without a limit."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
