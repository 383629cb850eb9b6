"""Background job queues (seed: ``job_queue``): the `JobQueue` Protocol, its memory and Redis
backends, and the job value objects.

`enqueue`, `job_status` and `cancel` (what a route calls) and `QueueWorker` (what a worker
process runs) sit above the container, in `streaming_mw.runtime`, and are exported by
`streaming_mw` itself.
"""

from __future__ import annotations

from .base import JobQueue
from .memory import MemoryJobQueue
from .model import Delivery, JobEnvelope, JobHandle, JobState, JobStatus, QueueConfig
from .redis import RedisJobQueue

__all__ = [
    "Delivery",
    "JobEnvelope",
    "JobHandle",
    "JobQueue",
    "JobState",
    "JobStatus",
    "MemoryJobQueue",
    "QueueConfig",
    "RedisJobQueue",
]
