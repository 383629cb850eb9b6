"""Job processors: ``(payload, ctx)`` where ``ctx`` is the job's `StreamContext`.

Sync processors run in the worker's threads (each ``ctx`` call blocks until the event is
accepted); async ones run on its event loop and await the same calls.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming_mw import StreamContext


def deploy_task(payload: dict[str, Any], ctx: StreamContext) -> None:
    """A deployment: logs and progress for each step, then the result."""
    steps = int(payload.get("steps", 5))
    delay = float(payload.get("delay", 0.5))
    ctx.log(f"🚀 Deploying {payload.get('app', 'app')} in {steps} steps")
    for step in range(1, steps + 1):
        if ctx.cancelled:  # cancel(job_id), shutdown, or the job moved to another worker
            return
        time.sleep(delay)
        ctx.progress(round(100 * step / steps), step=f"step {step}/{steps}")
        ctx.log(f"step {step} done")
    ctx.complete(success=True, deployment_id=f"{payload.get('app', 'app')}-{int(time.time())}")


async def import_task(payload: dict[str, Any], ctx: StreamContext) -> None:
    """An async import: the same API, awaited."""
    rows = int(payload.get("rows", 1000))
    batch = max(1, rows // 10)
    for done in range(batch, rows + batch, batch):
        await asyncio.sleep(float(payload.get("delay", 0.1)))
        await ctx.progress(min(100, round(100 * done / rows)), step="importing")
    await ctx.complete(success=True, rows=rows)


def flaky_task(payload: dict[str, Any], ctx: StreamContext) -> None:
    """Always fails: shows retries with backoff and the dead-letter stream."""
    ctx.log("trying…")
    raise RuntimeError(payload.get("error", "upstream unavailable"))
