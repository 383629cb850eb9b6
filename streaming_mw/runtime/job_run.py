"""Small pieces of `QueueWorker`: a running job, ending its stream, waiting for a slot."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StreamClosedError

if TYPE_CHECKING:
    from ..emitters import StreamContext
    from ..jobs.model import Delivery

__all__ = ["Running", "end_stream", "slot_or_stop"]


@dataclass(slots=True)
class Running:
    """A job this worker is running."""

    delivery: Delivery
    ctx: StreamContext
    task: asyncio.Task[None]
    is_async: bool
    cancel_requested: bool = False
    lost: bool = False
    """Another worker took the job over: this one must neither publish nor settle it."""

    def interrupt(self) -> None:
        """Ask the job to stop: an async processor is cancelled, a sync one sees
        ``ctx.cancelled`` (a thread cannot be stopped from outside)."""
        self.ctx.cancelled = True
        if self.lost:
            self.ctx.detach()  # whatever it still emits must not reach the new owner's stream
        if self.is_async:
            self.task.cancel()


async def slot_or_stop(slots: asyncio.Semaphore, stopping: asyncio.Event) -> bool:
    """Wait for a free slot; False (holding none) if ``stopping`` is set first."""
    slot = asyncio.ensure_future(slots.acquire())
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({slot, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not slot.done():
        slot.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await slot
        return False
    if stopping.is_set():
        slots.release()
        return False
    return True


async def end_stream(ctx: StreamContext, message: str, **details: Any) -> None:
    """End the stream with an `error` event unless it already ended."""
    if ctx.closed:
        return
    with contextlib.suppress(StreamClosedError):
        await ctx.error(message, **details)
