"""`LeaseKeeper`: refreshes held leases before their TTL runs out.

A lease is refreshed every ``ttl_seconds / 3`` while it is held, so a stream may last far longer
than the TTL; a process that dies stops refreshing and its leases expire (crash recovery). The
leases due are refreshed together, with those due within the next half interval, so the leases
of a process fall into step: one batch per interval, one pipelined call per Redis limiter.

A refresh that finds its lease gone (`LeaseLost`: expired through an outage, evicted, flushed)
is counted (``streaming_mw.leases.lost``) and handed to the callback the lease's owner set with
`watch` (the request: end its stream, or let it go on, per ``on_lease_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .._tasks import detached
from ..errors import BackendUnavailableError, LeaseLost
from ..leases import RedisLeaseLimiter

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..leases.base import Lease
    from .lease_events import LeaseEvents

__all__ = ["LeaseKeeper"]

log = logging.getLogger("streaming_mw.leases")

_RETRY_AFTER_FAILURE = 1.0


class LeaseKeeper:
    """One background task per process that keeps every held lease alive."""

    def __init__(self, events: Callable[[], LeaseEvents] | None = None) -> None:
        self._events = events
        self._on_lost: dict[Lease, Callable[[Lease], str]] = {}
        self.lost = 0
        """How many held leases were found lost."""
        self._due: dict[Lease, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> list[Lease]:
        """The leases currently kept alive."""
        return list(self._due)

    def hold(self, lease: Lease) -> None:
        """Keep ``lease`` alive until `drop` is called."""
        self._due[lease] = time.monotonic() + lease.ttl_seconds / 3
        self._wake.set()

    def watch(self, lease: Lease, on_lost: Callable[[Lease], str]) -> None:
        """Call ``on_lost(lease)`` if ``lease`` is found lost; it returns what happens next,
        for the log line."""
        if lease in self._due:
            self._on_lost[lease] = on_lost

    def drop(self, lease: Lease) -> None:
        """Stop refreshing ``lease`` (it is being released)."""
        self._due.pop(lease, None)
        self._on_lost.pop(lease, None)

    def start(self) -> None:
        """Start the refresh task on the running loop (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="streaming_mw.lease_keeper", context=detached()
            )

    async def stop(self) -> None:
        """Stop the refresh task; held leases are not released here."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if any(at <= now for at in self._due.values()):
                await self._refresh_batch(now)
                continue
            self._wake.clear()
            timeout = min(self._due.values(), default=now + 3600) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _refresh_batch(self, now: float) -> None:
        """Refresh every lease that is due, and those due within half an interval (so the
        leases of a process fall into step: one batch per interval), one call per limiter."""
        due = [lease for lease, at in self._due.items() if at <= now]
        horizon = now + min(lease.ttl_seconds for lease in due) / 6
        batch = [lease for lease, at in self._due.items() if at <= horizon]
        by_limiter: dict[int, list[Lease]] = {}
        for lease in batch:
            by_limiter.setdefault(id(lease.limiter), []).append(lease)
        await asyncio.gather(*(self._refresh_group(group) for group in by_limiter.values()))

    async def _refresh_group(self, leases: list[Lease]) -> None:
        limiter = leases[0].limiter
        if not isinstance(limiter, RedisLeaseLimiter):
            await asyncio.gather(*(self._refresh(lease) for lease in leases))
            return
        try:
            results: list[BaseException | None] = list(await limiter.refresh_many(leases))
        except Exception as exc:
            results = [exc] * len(leases)
        for lease, result in zip(leases, results, strict=True):
            self._settle(lease, result)

    async def _refresh(self, lease: Lease) -> None:
        try:
            await lease.refresh_async()
        except Exception as exc:
            self._settle(lease, exc)
        else:
            self._settle(lease, None)

    def _settle(self, lease: Lease, error: BaseException | None) -> None:
        """Schedule ``lease``'s next refresh after one that ended with ``error`` (or None)."""
        if isinstance(error, LeaseLost):
            on_lost = self._on_lost.get(lease)
            self.drop(lease)
            self.lost += 1
            if self._events is not None:
                self._events().lost(lease)
            outcome = "the stream goes on without it" if on_lost is None else on_lost(lease)
            log.warning(
                "lease %s of user %r was lost (expired or removed before it could be "
                "refreshed); %s",
                lease.lease_id,
                lease.user_id,
                outcome,
            )
            return
        if isinstance(error, BackendUnavailableError):
            log.warning("could not refresh lease %s: %s; retrying", lease.lease_id, error)
            if self._events is not None:
                self._events().backend_error("refresh", lease.user_id, lease.lease_id)
            delay = min(_RETRY_AFTER_FAILURE, lease.ttl_seconds / 10)
        elif error is not None:
            log.error(
                "unexpected error refreshing lease %s; retrying", lease.lease_id, exc_info=error
            )
            delay = min(_RETRY_AFTER_FAILURE, lease.ttl_seconds / 10)
        else:
            delay = lease.ttl_seconds / 3
        if lease in self._due:
            self._due[lease] = time.monotonic() + delay
