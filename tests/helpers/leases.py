"""Shared by the lease tests: a factory of limiters of one backend, and bounded polling."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from streaming_mw.leases import LeaseLimiter


class MakeLimiter(Protocol):
    def __call__(
        self, *, limit: int = 5, ttl_seconds: float = 180, global_limit: int | None = None
    ) -> LeaseLimiter: ...


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
