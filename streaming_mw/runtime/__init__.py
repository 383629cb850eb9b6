"""The process runtime: what a web or worker process builds at startup and runs beside the
routes. Above the backends, below the web edge; the only layer that imports
dependency-injector.

- `container`: the `StreamingContainer` that wires limiter, channels, storage and jobs, and the
  ``init_*`` functions that configure it;
- `startup`: starting and stopping the container, Redis probing and the fallback to memory;
- `runner`: the worker pool that runs `sse_response` workers (threads or tasks);
- `keeper`: refreshes the leases of live streams, one batched call per interval;
- `registry`: the live streams of this process; `heartbeat`: their record in Redis, for
  ``streaming-mw streams list``;
- `drain` and `shutdown`: the shutdown drain, `start_drain` and `is_draining`;
- `jobs`: `enqueue`, `job_status`, `cancel` (what a route calls);
- `queue_worker` and `job_run`: `QueueWorker`, what a worker process runs.
"""

from __future__ import annotations

from .container import (
    StreamingContainer,
    StreamingOptions,
    current_container,
    get_container,
    init_channels,
    init_event_storage,
    init_lease_limiter,
    init_streaming,
    init_telemetry,
)
from .jobs import cancel, enqueue, init_jobs, job_status
from .queue_worker import QueueWorker
from .registry import ActiveStream, StreamRegistry
from .shutdown import is_draining, start_drain

__all__ = [
    "ActiveStream",
    "QueueWorker",
    "StreamRegistry",
    "StreamingContainer",
    "StreamingOptions",
    "cancel",
    "current_container",
    "enqueue",
    "get_container",
    "init_channels",
    "init_event_storage",
    "init_jobs",
    "init_lease_limiter",
    "init_streaming",
    "init_telemetry",
    "is_draining",
    "job_status",
    "start_drain",
]
