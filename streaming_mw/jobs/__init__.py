"""Background jobs (seed: ``StreamContext`` + ``job_queue``): `enqueue` from the web app,
`QueueWorker` processes run them and stream their events.

The queue backends and value objects load eagerly; `QueueWorker` and the web-side functions
(which sit above the container) load on first use, so the container can import the backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import JobQueue
from .memory import MemoryJobQueue
from .model import Delivery, JobEnvelope, JobHandle, JobState, JobStatus, QueueConfig
from .redis import RedisJobQueue

if TYPE_CHECKING:
    from .client import cancel, enqueue, init_jobs, job_status
    from .worker import QueueWorker

__all__ = [
    "Delivery",
    "JobEnvelope",
    "JobHandle",
    "JobQueue",
    "JobState",
    "JobStatus",
    "MemoryJobQueue",
    "QueueConfig",
    "QueueWorker",
    "RedisJobQueue",
    "cancel",
    "enqueue",
    "init_jobs",
    "job_status",
]

_LAZY = {
    "QueueWorker": "worker",
    "cancel": "client",
    "enqueue": "client",
    "init_jobs": "client",
    "job_status": "client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
