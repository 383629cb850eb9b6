"""The heartbeat of a process that generates resumable streams, and a follower's check that
the process generating its stream is still there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from ..channels.producing import producing
from ..errors import BackendUnavailableError, StreamClosedError
from .sink import error_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..channels import AsyncStreamChannel
    from ..channels.producing import ProducingBackend
    from ..runtime.container import Runtime

__all__ = ["CANCEL_POLL", "HEARTBEAT_TTL", "producer_liveness", "watch_producers"]

log = logging.getLogger("streaming_mw.resumable")

HEARTBEAT_TTL: Final = 5.0
"""Seconds the producer's heartbeat lives; followers end the stream once it has expired."""
HEARTBEAT_EVERY: Final = 1.0
CANCEL_POLL: Final = 0.05
"""Seconds between two looks at the cancel flag (and at the grace clock)."""


_checks: dict[tuple[int, str], asyncio.Future[bool | None]] = {}


async def _shared_check(backend: ProducingBackend, stream_id: str) -> bool | None:
    """``backend.producer_alive(stream_id)``, asked once for all the followers of the stream
    that want it at the same moment: 10,000 idle followers of one stream would otherwise make
    10,000 Redis calls at once, queueing new followers behind them for a pooled connection."""
    key = (id(backend), stream_id)
    pending = _checks.get(key)
    if pending is None:
        pending = asyncio.ensure_future(backend.producer_alive(stream_id))
        _checks[key] = pending
        pending.add_done_callback(lambda done: _settled(key, done))
    return await asyncio.shield(pending)


def _settled(key: tuple[int, str], done: asyncio.Future[bool | None]) -> None:
    _checks.pop(key, None)
    if not done.cancelled():
        done.exception()  # retrieved: its followers may all have left meanwhile


class _ProducerCheck:
    """`producer_liveness`'s check of one follower: a small slotted object, not a closure
    (its function, four cells and their tuple), since every idle follower holds one."""

    __slots__ = ("_backend", "_channel", "_generated", "_stream_id")

    def __init__(
        self, channel: AsyncStreamChannel, backend: ProducingBackend, stream_id: str
    ) -> None:
        self._channel = channel
        self._backend = backend
        self._stream_id = stream_id
        self._generated = True

    async def __call__(self) -> bool | None:
        if not self._generated:
            return None
        alive = await _shared_check(self._backend, self._stream_id)
        if alive is None:
            self._generated = False
            return None
        if alive:
            return False
        lost = error_event("the process generating this stream is gone", reason="producer_lost")
        with contextlib.suppress(StreamClosedError):  # it ended meanwhile: that terminal stays
            await self._channel.publish(self._stream_id, lost)
        return True


def producer_liveness(
    channel: AsyncStreamChannel, stream_id: str
) -> Callable[[], Awaitable[bool | None]] | None:
    """A follower's check of the stream's producer: once the heartbeat of a generated stream
    has expired, it ends the stream with ``error {reason: "producer_lost"}`` and returns True.
    Streams that are not generated (queued jobs, emitters) are never ended by it: for them it
    returns None, and the follower stops asking."""
    backend = producing(channel.backend)
    if backend is None:
        return None
    return _ProducerCheck(channel, backend, stream_id)


async def watch_producers(runtime: Runtime, backend: ProducingBackend) -> None:
    """While the process generates resumable streams: refresh their heartbeats every
    ``HEARTBEAT_EVERY`` seconds and stop those whose cancel was requested, polling every
    ``CANCEL_POLL`` seconds, all in one round trip."""
    loop = asyncio.get_running_loop()
    next_beat = 0.0
    while runtime.producers:
        now = loop.time()
        ttl = None
        if now >= next_beat:
            ttl, next_beat = HEARTBEAT_TTL, now + HEARTBEAT_EVERY
        try:
            cancelled = await backend.beat(list(runtime.producers), ttl)
        except BackendUnavailableError as exc:
            log.debug("producer heartbeat failed: %r", exc)
            cancelled = set()
        for stream_id in cancelled:
            producer = runtime.producers.get(stream_id)
            if producer is not None:
                producer.stop("cancelled")
        await asyncio.sleep(CANCEL_POLL)
