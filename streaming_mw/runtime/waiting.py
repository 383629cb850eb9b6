"""`LeaseWaiters`: requests of this process waiting for a lease slot (``stream_lease(wait=...)``).

A waiter tries to acquire; at the limit it waits, without polling, for the first of:

- a release announced by Redis on the channel of the limit that refused it (the release script
  publishes on ``<key>:freed``; the process's one Pub/Sub connection, `RedisFanout`, carries it);
- a release in this process's memory limiter (`MemoryLeaseLimiter.next_release`);
- another waiter of this process, refused by the same limit, that was woken (it wakes the
  others, oldest first);
- the refused limit's ``retry_after`` (the earliest lease could expire without any release);
- the client going away, or the deadline.

Then it tries again. Waiters of one process are woken oldest first, so they are served roughly
first come, first served; across processes the first retry to reach Redis wins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import BackendUnavailableError, StreamLimitExceeded
from ..leases import FailoverLeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from ..channels.base import QueueSubscription
    from ..leases.base import Lease, LeaseLimiter

__all__ = ["LeaseWaiters"]


def _parts(limiter: LeaseLimiter) -> tuple[MemoryLeaseLimiter | None, RedisLeaseLimiter | None]:
    if isinstance(limiter, FailoverLeaseLimiter):
        memory = limiter.fallback if isinstance(limiter.fallback, MemoryLeaseLimiter) else None
        redis = limiter.primary if isinstance(limiter.primary, RedisLeaseLimiter) else None
        return memory, redis
    if isinstance(limiter, MemoryLeaseLimiter):
        return limiter, None
    if isinstance(limiter, RedisLeaseLimiter):
        return None, limiter
    return None, None


@dataclass(eq=False, slots=True)
class _Waiter:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    limit: tuple[str, str] | None = None
    """The limit that refused it last: ("user", user id) or ("global", "")."""


class LeaseWaiters:
    """The waiters of one process, oldest first."""

    def __init__(self) -> None:
        self._queue: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """How many acquisitions wait for a slot now."""
        return len(self._queue)

    def wake(self, limit: tuple[str, str] | None) -> None:
        """Let every waiter refused by ``limit`` try again, oldest first."""
        for waiter in self._queue:
            if waiter.limit == limit:
                waiter.event.set()

    async def acquire(
        self,
        acquire: Callable[[], Awaitable[Lease]],
        *,
        wait: float,
        limiter: LeaseLimiter,
        subscribe: Callable[[str], Awaitable[QueueSubscription]] | None = None,
        gone: asyncio.Event | None = None,
    ) -> Lease:
        """``acquire()``, retried on each wake-up until ``wait`` seconds have passed; then (or
        once ``gone`` is set) the last `StreamLimitExceeded` is raised."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        memory, redis = _parts(limiter)
        me = _Waiter()
        mine = me.event
        self._queue.append(me)
        subscription: QueueSubscription | None = None
        channel: str | None = None
        try:
            while True:
                freed = memory.next_release() if memory is not None else None
                mine.clear()
                try:
                    return await acquire()
                except StreamLimitExceeded as exc:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or (gone is not None and gone.is_set()):
                        raise
                    me.limit = (exc.scope, exc.user_id if exc.scope == "user" else "")
                    wanted = None
                    if redis is not None and subscribe is not None:
                        wanted = redis.release_channel(exc.user_id, exc.scope)
                    if wanted != channel:
                        if subscription is not None:
                            subscription.close()
                        subscription, channel = await _subscribe(subscribe, wanted), wanted
                        continue  # try again now that a release cannot be missed
                    woken = await _first(
                        mine.wait(),
                        None if freed is None else freed.wait(),
                        None if subscription is None else subscription.get(),
                        None if gone is None else gone.wait(),
                        within=min(remaining, exc.retry_after),
                    )
                    if gone is not None and gone.is_set():
                        raise
                    if woken and not mine.is_set():
                        self.wake(me.limit)
        finally:
            self._queue.remove(me)
            if subscription is not None:
                subscription.close()


async def _subscribe(
    subscribe: Callable[[str], Awaitable[QueueSubscription]] | None, channel: str | None
) -> QueueSubscription | None:
    if subscribe is None or channel is None:
        return None
    try:
        return await subscribe(channel)
    except BackendUnavailableError:
        return None  # no notices: the waiter still wakes on its retry_after and local releases


async def _first(*waits: Coroutine[object, object, object] | None, within: float) -> bool:
    """Wait for the first of ``waits`` (or ``within`` seconds); True unless time ran out."""
    tasks = [asyncio.ensure_future(wait) for wait in waits if wait is not None]
    try:
        done, _ = await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return bool(done)
