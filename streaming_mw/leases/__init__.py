"""Per-user stream leases: the `LeaseLimiter` contract, memory and Redis implementations."""

from __future__ import annotations

from .base import Lease, LeaseLimiter
from .failover import FailoverLeaseLimiter, RedisFailurePolicy
from .memory import MemoryLeaseLimiter
from .redis import RedisLeaseLimiter

__all__ = [
    "FailoverLeaseLimiter",
    "Lease",
    "LeaseLimiter",
    "MemoryLeaseLimiter",
    "RedisFailurePolicy",
    "RedisLeaseLimiter",
]
