"""`StreamRegistry`: the streams this process is serving right now, readable from code."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ActiveStream", "StreamRegistry"]


@dataclass(frozen=True, slots=True)
class ActiveStream:
    """One open stream response: who it is for, where, since when, and the leases it holds."""

    key: int
    path: str
    started_at: float
    user_id: str | None = None
    lease_ids: tuple[str, ...] = ()
    stream_id: str | None = None
    """The ``X-Stream-ID`` of a queue-based stream (None for a direct stream)."""
    events: int = 0
    """Events sent so far (keep-alive comments not counted)."""
    last_event_at: float | None = None


class StreamRegistry:
    """Open stream responses of this process, by user and in total."""

    def __init__(self) -> None:
        self._streams: dict[int, ActiveStream] = {}
        self._keys = itertools.count(1)
        self._activity: dict[int, tuple[int, float]] = {}
        self._sources: dict[int, Callable[[], tuple[int, float | None]]] = {}

    def open(
        self,
        path: str,
        stream_id: str | None = None,
        activity: Callable[[], tuple[int, float | None]] | None = None,
    ) -> int:
        """Record a new stream and return its key.

        ``activity``, when given, is asked for the stream's events sent and the time of the
        last one whenever a snapshot is taken: the stream counts them itself, for free, and
        `note_events` is not needed.
        """
        key = next(self._keys)
        self._streams[key] = ActiveStream(key, path, time.time(), stream_id=stream_id)
        if activity is not None:
            self._sources[key] = activity
        return key

    def note_events(self, key: int, count: int) -> None:
        """Count ``count`` events just sent on stream ``key``."""
        if count > 0 and key in self._streams:
            sent, _ = self._activity.get(key, (0, 0.0))
            self._activity[key] = (sent + count, time.time())

    def add_lease(self, key: int, user_id: str, lease_id: str) -> None:
        """Note that stream ``key`` holds a lease of ``user_id`` (its first lease names its
        user)."""
        stream = self._streams.get(key)
        if stream is not None:
            self._streams[key] = replace(
                stream, user_id=stream.user_id or user_id, lease_ids=(*stream.lease_ids, lease_id)
            )

    def remove_lease(self, key: int, lease_id: str) -> None:
        """Note that stream ``key`` gave lease ``lease_id`` back before it ended."""
        stream = self._streams.get(key)
        if stream is not None:
            ids = tuple(i for i in stream.lease_ids if i != lease_id)
            self._streams[key] = replace(stream, lease_ids=ids)

    def close(self, key: int) -> None:
        """Forget stream ``key`` (idempotent)."""
        self._streams.pop(key, None)
        self._activity.pop(key, None)
        self._sources.pop(key, None)

    def count(self, user_id: str | None = None) -> int:
        """Open streams in total, or of one user."""
        if user_id is None:
            return len(self._streams)
        return sum(1 for stream in self._streams.values() if stream.user_id == user_id)

    def streams(self, user_id: str | None = None) -> list[ActiveStream]:
        """Snapshots of the open streams, oldest first."""
        return [
            self._snapshot(s)
            for s in self._streams.values()
            if user_id is None or s.user_id == user_id
        ]

    def _snapshot(self, stream: ActiveStream) -> ActiveStream:
        source = self._sources.get(stream.key)
        activity = source() if source is not None else self._activity.get(stream.key)
        if activity is None or not activity[0]:
            return stream
        return replace(stream, events=activity[0], last_event_at=activity[1])

    def by_user(self) -> dict[str, int]:
        """Open streams per user (streams without a user are not counted)."""
        return dict(Counter(s.user_id for s in self._streams.values() if s.user_id is not None))
