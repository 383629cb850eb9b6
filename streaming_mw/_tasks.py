"""Running clean-up work that must finish even when its caller is cancelled, and process-wide
work started on a request's behalf outside that request's context (`detached`)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["TaskSet", "detached"]

T = TypeVar("T")


def detached() -> contextvars.Context:
    """A new, empty context for process-wide work (a reader, a watchdog, a timer every stream
    shares) that the first request needing it starts. Started in that request's context, it
    would run in it for the life of the process: keep that request, its response and its
    follower alive (kilobytes), and make that request's span the parent of its own spans."""
    return contextvars.Context()


class TaskSet:
    """Holds strong references to background tasks until they finish."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()

    def spawn(
        self, coro: Coroutine[object, object, T], *, name: str | None = None, detach: bool = False
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a task that lives until done, whoever awaits it; ``detach``: in a
        context of its own (`detached`), for process-wide work."""
        context = detached() if detach else None
        task = asyncio.get_running_loop().create_task(coro, name=name, context=context)
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
