"""Small pieces of `QueueWorker`: a running job, ending its stream, waiting for a slot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._failure import new_error_id
from ..errors import StreamClosedError

if TYPE_CHECKING:
    from ..emitters import StreamContext
    from ..jobs.base import JobQueue
    from ..jobs.model import Delivery, QueueConfig

__all__ = ["Running", "end_stream", "settle_failure", "slot_or_stop"]

log = logging.getLogger("streaming_mw.jobs")


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


async def settle_failure(
    queue: JobQueue, delivery: Delivery, ctx: StreamContext, exc: Exception, config: QueueConfig
) -> str:
    """A processor raised: retry the job later, or dead-letter it once out of attempts; say so
    in its stream. Returns the outcome (``retrying`` or ``dead_letter``)."""
    attempt, job_id = delivery.attempt, delivery.envelope.job_id
    error = f"{type(exc).__name__}: {exc}"
    error_id = new_error_id()
    # The stream (what the client reads) names the error only in development.
    said = f": {error}" if config.expose_errors else f" (error_id {error_id})"
    if attempt <= config.max_retries and not ctx.closed:
        delay = config.backoff(attempt)
        log.warning(
            "job %s attempt %d failed (%s, error_id %s); retry in %.1fs",
            job_id,
            attempt,
            error,
            error_id,
            delay,
        )
        await queue.retry_later(delivery, delay, error)
        with contextlib.suppress(StreamClosedError):
            await ctx.log(f"attempt {attempt} failed{said}; retrying in {delay:g}s", "warning")
        return "retrying"
    log.error(
        "job %s failed after %d attempt(s): %s (error_id %s); dead-lettered",
        job_id,
        attempt,
        error,
        error_id,
    )
    await queue.dead_letter(delivery, error)
    await end_stream(
        ctx,
        f"job failed after {attempt} attempt(s){said}",
        reason="dead_letter",
        error_id=error_id,
    )
    return "dead_letter"
