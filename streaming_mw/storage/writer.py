"""`StorageWriter`: events reach storage through a bounded buffer flushed in batches by one
background task, so a slow, failing or absent store never delays or breaks delivery.

`offer` never waits: when the buffer is full the oldest pending write is dropped and counted.
A batch the store refuses or does not take within ``write_timeout`` is dropped and counted too.
Drops are logged at most once per ``log_every`` seconds and counted in the
``streaming_mw.storage.dropped`` metric. `stop` flushes what is left within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from .._tasks import detached
from ..events import StreamEvent

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter

    from .base import EventStorage

__all__ = ["StorageWriter"]

log = logging.getLogger("streaming_mw.storage")

_Pending = StreamEvent | tuple[str, str | None, int, bytes]


class StorageWriter:
    """Buffers events for an `EventStorage` and writes them in batches."""

    def __init__(
        self,
        storage: EventStorage,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        write_timeout: float = 10.0,
        log_every: float = 60.0,
        dropped_counter: Counter | None = None,
    ) -> None:
        self.storage = storage
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.write_timeout = write_timeout
        self.log_every = log_every
        self.dropped = 0
        """Events that never reached storage (buffer overflow or failed batches)."""
        self.written = 0
        self._counter = dropped_counter
        self._pending: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_ready = asyncio.Event()
        self._logged_dropped = 0
        self._last_log = 0.0

    @property
    def pending(self) -> int:
        """Events waiting to be written."""
        return len(self._pending)

    def offer(self, event: StreamEvent) -> None:
        """Queue ``event`` for storage; never waits (safe from any thread)."""
        self._push(event)

    def offer_payload(self, stream_id: str, epoch: str | None, seq: int, payload: bytes) -> None:
        """Queue an appended stream event in its byte form (decoded later, off the hot path)."""
        self._push((stream_id, epoch, seq, payload))

    def _push(self, item: _Pending) -> None:
        if len(self._pending) >= self.capacity:
            self._pending.popleft()
            self._drop(1)
        self._pending.append(item)
        if len(self._pending) == self.batch_size and self._loop is not None:
            try:
                on_loop = asyncio.get_running_loop() is self._loop
            except RuntimeError:
                on_loop = False
            if on_loop:  # a full batch: write it now (other threads wait for the interval)
                self._batch_ready.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self._counter is not None:
            self._counter.add(count)

    def start(self) -> None:
        """Start the flush task on the running loop (once)."""
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._batch_ready = asyncio.Event()
            self._task = self._loop.create_task(
                self._run(), name="streaming_mw.storage_writer", context=detached()
            )

    async def stop(self, deadline: float = 5.0) -> None:
        """Stop the flush task, then write what is left within ``deadline`` seconds."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            async with asyncio.timeout(deadline):
                while self._pending:
                    await self._flush_once()
        except TimeoutError:
            self._drop(len(self._pending))
            self._pending.clear()
        self._log_drops(force=True)

    async def flush(self) -> None:
        """Write everything pending now (tests, shutdown)."""
        while self._pending:
            await self._flush_once()

    async def _run(self) -> None:
        while True:
            if len(self._pending) < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._batch_ready.wait()
                self._batch_ready.clear()
            if self._pending:
                await self._flush_once()
            self._log_drops()

    async def _flush_once(self) -> None:
        batch = [
            self._decode(self._pending.popleft())
            for _ in range(min(self.batch_size, len(self._pending)))
        ]
        events = [event for event in batch if event is not None]
        if not events:
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.storage.append(events)
        except asyncio.CancelledError:
            self._drop(len(events))  # stopped mid-write: these never reached the store
            raise
        except Exception as exc:  # a failing store must never reach the streams
            log.debug("event storage refused a batch of %d: %r", len(events), exc)
            self._drop(len(events))
        else:
            self.written += len(events)

    def _decode(self, item: _Pending) -> StreamEvent | None:
        if isinstance(item, StreamEvent):
            return item
        stream_id, epoch, seq, payload = item
        try:
            event = StreamEvent.from_bytes(payload)
        except ValueError:
            self._drop(1)
            return None
        event_id = f"{epoch}-{seq}" if epoch else str(seq)
        return StreamEvent(event.type, event.data, event_id, stream_id, event.timestamp)

    def _log_drops(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.dropped > self._logged_dropped and (
            force or now - self._last_log >= self.log_every
        ):
            log.warning(
                "event storage dropped %d event(s) so far (buffer full or storage failing); "
                "delivery is not affected",
                self.dropped,
            )
            self._logged_dropped, self._last_log = self.dropped, now
