"""In-process channel backend: history in a bounded deque, live delivery through bounded
asyncio queues. Nothing polls: subscribers wait on their queue. Loop-bound: publish from
other threads through `SyncStreamChannel`."""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import TYPE_CHECKING

from ..config import ChannelConfig
from ..errors import (
    ConfigurationError,
    StreamClosedError,
    StreamExistsError,
    StreamingError,
    StreamNotFoundError,
)
from ..events import new_epoch
from .base import Notice, ProducerMark, QueueSubscription, StreamMeta, StreamState
from .waits import SharedDeadlines

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .producing import Batch

__all__ = ["MemoryChannelBackend"]

_SWEEP_EVERY = 60.0


class _MemoryStream:
    __slots__ = (
        "cancel_requested",
        "created_at",
        "epoch",
        "events",
        "expires_at",
        "generated",
        "heartbeat_until",
        "job_id",
        "owner",
        "producers",
        "seq",
        "state",
        "subscribers",
    )

    def __init__(
        self, owner: str | None, job_id: str | None, history: int, now: float, ttl: float
    ) -> None:
        self.epoch = new_epoch()
        self.owner = owner
        self.job_id = job_id
        self.state = StreamState.RUNNING
        self.created_at = now
        self.expires_at = now + ttl
        self.seq = 0
        self.producers: dict[str, tuple[int, int]] = {}  # producer id -> (its seq, our seq)
        self.events: deque[tuple[int, bytes]] = deque(maxlen=history)
        self.subscribers: set[QueueSubscription] = set()
        self.generated = False
        self.heartbeat_until = 0.0
        self.cancel_requested = False

    def meta(self, stream_id: str) -> StreamMeta:
        first = self.events[0][0] if self.events else 0
        return StreamMeta(
            stream_id,
            self.epoch,
            self.state,
            self.created_at,
            self.seq,
            first,
            self.owner,
            self.job_id,
        )


class MemoryChannelBackend:
    """Streams of one process. History expires ``history_ttl_seconds`` after the last event."""

    def __init__(
        self, config: ChannelConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or ChannelConfig()
        self._clock = clock
        self._streams: dict[str, _MemoryStream] = {}
        self._next_sweep = clock() + _SWEEP_EVERY
        self._deadlines = SharedDeadlines()  # one timer for every follower's wait

    def _get(self, stream_id: str) -> _MemoryStream | None:
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            for key in [k for k, s in self._streams.items() if s.expires_at <= now]:
                del self._streams[key]
        stream = self._streams.get(stream_id)
        if stream is not None and stream.expires_at <= now:
            del self._streams[stream_id]
            return None
        return stream

    async def create(
        self, stream_id: str, *, owner: str | None = None, job_id: str | None = None
    ) -> StreamMeta:
        stream = self._get(stream_id)
        if stream is None:
            stream = _MemoryStream(
                owner,
                job_id,
                self.config.history_size,
                self._clock(),
                self.config.history_ttl_seconds,
            )
            self._streams[stream_id] = stream
        return stream.meta(stream_id)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        stream = self._get(stream_id)
        return None if stream is None else stream.meta(stream_id)

    async def append(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        return self.append_nowait(stream_id, payload, final_state=final_state, producer=producer)

    def append_nowait(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        """`append` without a coroutine (`NowaitAppending`): it never waits. Call it on the
        loop that owns the backend."""
        stream = self._get(stream_id)
        if stream is None:
            raise StreamNotFoundError(stream_id)
        if producer is not None and (last := stream.producers.get(producer.producer_id)):
            if producer.seq == last[0]:
                return last[1]  # a repeat of the producer's last append: applied already
            if producer.seq < last[0]:
                raise ConfigurationError(
                    f"producer {producer.producer_id!r} appended out of order on {stream_id}"
                )
        if stream.state is not StreamState.RUNNING:
            raise StreamClosedError(stream_id)
        stream.seq += 1
        if producer is not None:
            stream.producers[producer.producer_id] = (producer.seq, stream.seq)
        # A right-sized copy: orjson's output keeps its whole working buffer (about 4 KB even
        # for a 60-byte event) for as long as the bytes live, and history lives for hours.
        payload = bytes(memoryview(payload))
        stream.events.append((stream.seq, payload))
        stream.expires_at = self._clock() + self.config.history_ttl_seconds
        if final_state is not None:
            stream.state = final_state
        notice = Notice(stream.epoch, stream.seq, payload)
        for subscription in list(stream.subscribers):
            subscription.deliver(notice)
        return stream.seq

    async def append_batch(
        self,
        stream_id: str,
        payloads: Sequence[bytes],
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark,
    ) -> int:
        """`ProducingBackend.append_batch`: the payloads in order, as one idempotent append."""
        stream = self._get(stream_id)
        if stream is None:
            raise StreamNotFoundError(stream_id)
        last = stream.producers.get(producer.producer_id)
        if last is not None and producer.seq == last[0]:
            return last[1] - len(payloads) + 1
        if producer is not None and last is not None and producer.seq < last[0]:
            raise ConfigurationError(
                f"producer {producer.producer_id!r} appended out of order on {stream_id}"
            )
        if stream.state is not StreamState.RUNNING:
            raise StreamClosedError(stream_id)
        first = stream.seq + 1
        subscribers = list(stream.subscribers)
        for payload in payloads:
            stream.seq += 1
            kept = bytes(memoryview(payload))  # right-sized, as in `append`
            stream.events.append((stream.seq, kept))
            for subscription in subscribers:
                subscription.deliver(Notice(stream.epoch, stream.seq, kept))
        stream.expires_at = self._clock() + self.config.history_ttl_seconds
        if final_state is not None:
            stream.state = final_state
            stream.heartbeat_until = 0.0  # the producing ends with it (see `stop_producing`)
            stream.cancel_requested = False
        stream.producers[producer.producer_id] = (producer.seq, stream.seq)
        return first

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | StreamingError]:
        """`ProducingBackend.append_batches`: each `append_batch` in turn."""
        answers: list[int | StreamingError] = []
        for stream_id, payloads, final_state, producer in batches:
            try:
                answers.append(
                    await self.append_batch(
                        stream_id, payloads, final_state=final_state, producer=producer
                    )
                )
            except StreamingError as exc:
                answers.append(exc)
        return answers

    async def producer_progress(self, stream_id: str, producer_id: str) -> int:
        stream = self._get(stream_id)
        last = None if stream is None else stream.producers.get(producer_id)
        return 0 if last is None else last[0]

    async def create_generated(
        self, stream_id: str, *, owner: str, ttl: float, epoch: str | None = None
    ) -> StreamMeta:
        if self._get(stream_id) is not None:
            raise StreamExistsError(stream_id)
        now = self._clock()
        history, keep = self.config.history_size, self.config.history_ttl_seconds
        stream = self._streams[stream_id] = _MemoryStream(owner, None, history, now, keep)
        stream.epoch = epoch or stream.epoch
        stream.generated = True
        stream.heartbeat_until = now + ttl
        return stream.meta(stream_id)

    async def beat(self, stream_ids: Sequence[str], ttl: float | None) -> set[str]:
        cancelled = set()
        for stream_id in stream_ids:
            stream = self._get(stream_id)
            if stream is None:
                continue
            if ttl is not None:
                stream.heartbeat_until = self._clock() + ttl
            if stream.cancel_requested:
                cancelled.add(stream_id)
        return cancelled

    async def stop_producing(self, stream_id: str) -> None:
        stream = self._get(stream_id)
        if stream is not None:
            stream.heartbeat_until = 0.0
            stream.cancel_requested = False

    async def producer_alive(self, stream_id: str) -> bool | None:
        stream = self._get(stream_id)
        if stream is None or not stream.generated:
            return None
        return stream.heartbeat_until > self._clock()

    async def request_cancel(self, stream_id: str) -> None:
        stream = self._get(stream_id)
        if stream is not None:
            stream.cancel_requested = True

    async def followers(self, stream_id: str) -> int:
        stream = self._get(stream_id)
        return 0 if stream is None else len(stream.subscribers)

    async def read(self, stream_id: str, after_seq: int, limit: int) -> Sequence[tuple[int, bytes]]:
        stream = self._get(stream_id)
        if stream is None or not stream.events:
            return []
        start = max(0, after_seq + 1 - stream.events[0][0])
        return list(itertools.islice(stream.events, start, start + limit))

    async def subscribe(self, stream_id: str) -> QueueSubscription:
        stream = self._get(stream_id)
        if stream is None:
            raise StreamNotFoundError(stream_id)
        subscription = QueueSubscription(
            self.config.subscriber_queue_size,
            stream.subscribers.discard,
            max_bytes=self.config.subscriber_queue_bytes,
            deadlines=self._deadlines,
        )
        stream.subscribers.add(subscription)
        return subscription

    async def aclose(self) -> None:
        self._deadlines.cancel()
        for stream in self._streams.values():
            stream.subscribers.clear()
