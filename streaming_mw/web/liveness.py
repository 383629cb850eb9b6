"""A follower's check that the process generating its stream is still there."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from ..channels.producing import ProducingBackend
from ..errors import StreamClosedError
from .sink import error_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..channels import AsyncStreamChannel

__all__ = ["producer_liveness"]


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


def producer_liveness(
    channel: AsyncStreamChannel, stream_id: str
) -> Callable[[], Awaitable[bool]] | None:
    """A follower's check of the stream's producer: once the heartbeat of a generated stream
    has expired, it ends the stream with ``error {reason: "producer_lost"}`` and returns True.
    Streams that are not generated (queued jobs, emitters) are never ended by it."""
    backend = channel.backend
    if not isinstance(backend, ProducingBackend):
        return None
    generated = True

    async def check() -> bool:
        nonlocal generated
        if not generated:
            return False
        alive = await _shared_check(backend, stream_id)
        if alive is None:
            generated = False
        if alive is None or alive:
            return False
        lost = error_event("the process generating this stream is gone", reason="producer_lost")
        with contextlib.suppress(StreamClosedError):  # it ended meanwhile: that terminal stays
            await channel.publish(stream_id, lost)
        return True

    return check
