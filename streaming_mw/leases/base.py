"""The `LeaseLimiter` contract and the `Lease` handle it hands out."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._types import check_user_id
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..config import StreamLeaseConfig

__all__ = [
    "Lease",
    "LeaseLimiter",
    "check_limit_and_ttl",
    "check_user_id",
    "hash_tag",
    "new_lease_id",
    "resolve_acquire",
    "retry_after_from",
]


def new_lease_id() -> str:
    """A random lease id (128 bits)."""
    return secrets.token_hex(16)


def hash_tag(user_id: str) -> str:
    """``user_id`` made safe inside a Redis hash tag: ``{`` and ``}`` (and ``%``, to stay
    unambiguous) are percent-encoded, so no user id can move its key to another slot's tag."""
    if "{" not in user_id and "}" not in user_id and "%" not in user_id:
        return user_id
    return user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def resolve_acquire(
    config: StreamLeaseConfig, user_id: str, limit: int | None, ttl_seconds: float | None
) -> tuple[int, float]:
    """Check an acquisition's arguments; return its limit and TTL (config where not given)."""
    check_user_id(user_id)
    return check_limit_and_ttl(
        config.limit if limit is None else limit,
        config.ttl_seconds if ttl_seconds is None else ttl_seconds,
    )


def check_limit_and_ttl(limit: object, ttl_seconds: object) -> tuple[int, float]:
    """Validate per-call overrides of the configured limit and TTL."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be an integer >= 1, got {limit!r}")
    if (
        isinstance(ttl_seconds, bool)
        or not isinstance(ttl_seconds, int | float)
        or not math.isfinite(ttl_seconds)
        or ttl_seconds <= 0
    ):
        raise ConfigurationError(f"ttl_seconds must be a finite number > 0, got {ttl_seconds!r}")
    return limit, float(ttl_seconds)


def retry_after_from(seconds_until_a_slot_may_free: float) -> float:
    """Clamp a hint for ``Retry-After`` to whole seconds between 1 and 60."""
    return float(min(60, max(1, math.ceil(seconds_until_a_slot_may_free))))


@dataclass(eq=False, slots=True)
class Lease:
    """One held stream slot of one user.

    ``expires_at`` is Unix time in seconds; refreshing moves it ``ttl_seconds`` ahead. Release is
    idempotent: the slot is given back once, however often `release` is called.
    """

    user_id: str
    lease_id: str
    expires_at: float
    ttl_seconds: float
    limiter: LeaseLimiter = field(repr=False)
    released: bool = False

    async def refresh_async(self) -> None:
        """Extend the lease by its TTL; raise `LeaseLost` if it already expired."""
        await self.limiter.refresh(self)

    async def release(self) -> None:
        """Give the slot back (once)."""
        await self.limiter.release(self)


@runtime_checkable
class LeaseLimiter(Protocol):
    """Caps concurrent streams per user with expiring leases.

    Implementations: `MemoryLeaseLimiter` (one process) and `RedisLeaseLimiter` (every process
    sharing the Redis). ``limit`` and ``ttl_seconds`` default to the limiter's config.
    """

    async def acquire(
        self, user_id: str, *, limit: int | None = None, ttl_seconds: float | None = None
    ) -> Lease:
        """Take a slot or raise `StreamLimitExceeded`."""
        ...

    async def refresh(self, lease: Lease) -> None:
        """Extend ``lease``; raise `LeaseLost` if it expired (it is never re-added)."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the slot back; a second call does nothing."""
        ...

    async def active(self, user_id: str) -> int:
        """How many unexpired leases ``user_id`` holds."""
        ...

    async def aclose(self) -> None:
        """Free the limiter's resources (not the leases)."""
        ...
