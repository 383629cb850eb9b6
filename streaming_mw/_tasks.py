"""Running clean-up work that must finish even when its caller is cancelled."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["TaskSet"]

T = TypeVar("T")


class TaskSet:
    """Holds strong references to background tasks until they finish."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()

    def spawn(
        self, coro: Coroutine[object, object, T], *, name: str | None = None
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a task that lives until done, whoever awaits it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shielded(self, coro: Coroutine[object, object, T], *, name: str | None = None) -> T:
        """Run ``coro`` to completion even if the caller is cancelled meanwhile."""
        return await asyncio.shield(self.spawn(coro, name=name))

    def cancel_all(self) -> None:
        """Cancel every pending task."""
        for task in list(self._tasks):
            task.cancel()

    async def join(self) -> None:
        """Wait for every pending task."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
