"""`stream_lease`: the seed's context manager, made correct for streaming responses.

Inside a request handled by `StreamingMiddleware`, a lease taken with ``stream_lease`` belongs
to the request: if the ``async with`` exits normally before the response starts (the seed's
``async with stream_lease(...): return StreamingResponse(...)``), the lease stays held until the
response body ends, the client disconnects or the app fails. Anywhere else, and when the block
exits by an exception, the lease is released when the block exits. While the process drains
for shutdown no lease is given: `DrainingError` (answered ``503`` by the middleware).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace

from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    DrainingError,
    StreamLimitExceeded,
)
from ..runtime.container import get_container
from ..runtime.startup import ensure_started
from ..telemetry import ATTR_LEASE_SCOPE, ATTR_USER
from .context import current_request

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

    from ..leases.base import Lease, LeaseLimiter
    from ..runtime.container import Runtime, StreamingContainer, StreamingOptions
    from ..runtime.keeper import LeaseKeeper
    from ..runtime.lease_events import LeaseEvents
    from ..runtime.waiting import LeaseWaiters
    from ..telemetry import Telemetry
    from .tracking import RequestStreams

__all__ = ["acquire_lease", "release_lease", "stream_lease"]

log = logging.getLogger("streaming_mw.leases")

_RELEASE_TIMEOUT = 5.0


def check_wait(wait: object) -> None:
    """``wait`` must be a finite number >= 0."""
    if (
        isinstance(wait, bool)
        or not isinstance(wait, int | float)
        or not math.isfinite(wait)
        or wait < 0
    ):
        raise ConfigurationError(f"wait must be a finite number >= 0, got {wait!r}")


async def acquire_lease(
    container: StreamingContainer,
    user_id: str,
    *,
    limit: int | None = None,
    ttl_seconds: float | None = None,
    wait: float | None = None,
    request: RequestStreams | None = None,
) -> Lease:
    """Take a lease from the container's limiter and keep it refreshed while held.

    At the limit, wait up to ``wait`` seconds (default: the config's ``wait_seconds``) for a
    slot; a ``request`` whose client goes away stops waiting at once. Raises `DrainingError`
    while the process drains for shutdown."""
    runtime: Runtime = container.runtime()
    if runtime.drain.draining:
        raise DrainingError("the server is shutting down")
    await ensure_started(container)
    limiter: LeaseLimiter = container.lease_limiter()
    span = trace.get_current_span()
    telemetry: Telemetry = container.telemetry()
    shown = telemetry.user(user_id) if span.is_recording() else None
    user_attr = {} if shown is None else {ATTR_USER: shown}
    if wait is None:
        options: StreamingOptions = container.options()
        wait = options.lease.wait_seconds
    check_wait(wait)

    def take() -> Awaitable[Lease]:
        return limiter.acquire(user_id, limit=limit, ttl_seconds=ttl_seconds)

    events: LeaseEvents = container.lease_events()
    started = time.monotonic()
    try:
        if wait > 0:
            waiters: LeaseWaiters = container.lease_waiters()
            fanout = runtime.redis_channels.fanout if runtime.redis_channels else None
            lease = await waiters.acquire(
                take,
                wait=wait,
                limiter=limiter,
                subscribe=None if fanout is None else fanout.subscribe,
                gone=None if request is None else request.watch_disconnect(),
            )
        else:
            lease = await take()
    except StreamLimitExceeded as exc:
        events.rejected(exc, waited=time.monotonic() - started if wait > 0 else None)
        span.add_event(
            "streaming_mw.lease.rejected",
            {**user_attr, "streaming_mw.lease.limit": exc.limit, ATTR_LEASE_SCOPE: exc.scope},
        )
        raise
    except BackendUnavailableError:
        events.backend_error("acquire", user_id)
        raise
    events.acquired(lease, waited=time.monotonic() - started if wait > 0 else None)
    span.add_event("streaming_mw.lease.acquired", user_attr)
    keeper: LeaseKeeper = container.lease_keeper()
    keeper.hold(lease)
    return lease


async def release_lease(container: StreamingContainer, lease: Lease) -> None:
    """Release ``lease`` once; finishes even if the caller is cancelled meanwhile."""
    keeper: LeaseKeeper = container.lease_keeper()
    keeper.drop(lease)
    if lease.released:
        return
    runtime: Runtime = container.runtime()
    try:
        await runtime.tasks.shielded(asyncio.wait_for(lease.release(), _RELEASE_TIMEOUT))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("could not release lease %s: %r", lease.lease_id, exc)
    else:
        events: LeaseEvents = container.lease_events()
        events.released(lease)


@asynccontextmanager
async def stream_lease(
    user_id: str,
    *,
    limit: int | None = None,
    ttl_seconds: float | None = None,
    wait: float | None = None,
) -> AsyncIterator[Lease]:
    """Hold one of ``user_id``'s concurrent stream slots; raise `StreamLimitExceeded` if none
    is free within ``wait`` seconds (default: `StreamLeaseConfig.wait_seconds`, 0).

    ``limit`` and ``ttl_seconds`` override the configured `StreamLeaseConfig` for this call.
    """
    request = current_request.get()
    container = request.container if request is not None else get_container()
    lease = await acquire_lease(
        container, user_id, limit=limit, ttl_seconds=ttl_seconds, wait=wait, request=request
    )
    adopted = request is not None and request.adopt(lease)
    try:
        yield lease
    except BaseException:
        await _release_now(container, request, lease)
        raise
    if not adopted or (request is not None and request.response_started):
        await _release_now(container, request, lease)


async def _release_now(
    container: StreamingContainer, request: RequestStreams | None, lease: Lease
) -> None:
    if request is not None:
        request.forget(lease)
    await release_lease(container, lease)
