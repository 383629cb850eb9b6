"""streaming_mw: real-time event delivery for FastAPI.

An ASGI middleware plus a dependency-injection extension: SSE framing, per-user stream leases,
Redis fan-out with an in-memory fallback, lossless resume and OpenTelemetry spans.

This module exports what a route author writes in an app. Everything else is imported from its
documented submodule: `streaming_mw.sse` (framing and parsing), `streaming_mw.events`,
`streaming_mw.errors` (the whole error tree), `streaming_mw.config`, `streaming_mw.leases`,
`streaming_mw.channels`, `streaming_mw.storage`, `streaming_mw.jobs` (backends),
`streaming_mw.runtime` (the container and its ``init_*`` functions) and `streaming_mw.web`.
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import Any

from .config import ChannelConfig, QueueRedisConfig, StorageConfig, StreamLeaseConfig
from .emitters import DeploymentEmitter, SSEEmitter, StreamContext
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidEventError,
    LeaseLost,
    StreamClosedError,
    StreamingError,
    StreamLimitExceeded,
    StreamNotFoundError,
)
from .events import StreamEvent
from .jobs import JobHandle, JobState, JobStatus, QueueConfig
from .leases import Lease
from .runtime import (
    QueueWorker,
    cancel,
    enqueue,
    init_jobs,
    init_streaming,
    init_telemetry,
    job_status,
)
from .sse import SSE_HEADERS, encode_stream_event
from .web import (
    EventStreamResponse,
    StreamingMiddleware,
    add_exception_handlers,
    cancel_stream,
    get_emitter,
    lease_dependency,
    resumable_response,
    sse_response,
    stream_lease,
    stream_response,
    streaming_identity,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "SSE_HEADERS",
    "BackendUnavailableError",
    "ChannelConfig",
    "ConfigurationError",
    "DeploymentEmitter",
    "EventStreamResponse",
    "InvalidEventError",
    "JobHandle",
    "JobState",
    "JobStatus",
    "Lease",
    "LeaseLost",
    "QueueConfig",
    "QueueRedisConfig",
    "QueueWorker",
    "SSEEmitter",
    "StorageConfig",
    "StreamClosedError",
    "StreamContext",
    "StreamEvent",
    "StreamLeaseConfig",
    "StreamLimitExceeded",
    "StreamNotFoundError",
    "StreamingError",
    "StreamingMiddleware",
    "add_exception_handlers",
    "cancel",
    "cancel_stream",
    "encode_stream_event",
    "enqueue",
    "get_emitter",
    "init_jobs",
    "init_streaming",
    "init_telemetry",
    "job_status",
    "lease_dependency",
    "resumable_response",
    "sse_response",
    "stream_lease",
    "stream_response",
    "streaming_identity",
]

_MOVED = {
    **dict.fromkeys(
        (
            "PING",
            "SSEComment",
            "SSEEvent",
            "SSEParser",
            "encode",
            "encode_item",
            "sse_headers",
        ),
        "streaming_mw.sse",
    ),
    **dict.fromkeys(("TERMINAL_EVENT_TYPES", "Cursor", "EventType"), "streaming_mw.events"),
    **dict.fromkeys(
        (
            "EventTooLargeError",
            "InvalidCursorError",
            "InvalidFieldError",
            "InvalidStreamIdError",
            "InvalidUserIdError",
            "LeaseError",
            "SlowConsumerError",
        ),
        "streaming_mw.errors",
    ),
    **dict.fromkeys(("StreamingSettings", "load_settings"), "streaming_mw.config"),
    **dict.fromkeys(
        ("LeaseLimiter", "MemoryLeaseLimiter", "RedisLeaseLimiter"), "streaming_mw.leases"
    ),
    **dict.fromkeys(
        (
            "AsyncStreamChannel",
            "Follower",
            "StreamMeta",
            "StreamState",
            "SyncRedisChannel",
            "SyncStreamChannel",
        ),
        "streaming_mw.channels",
    ),
    **dict.fromkeys(
        ("EventStorage", "MemoryEventStorage", "StorageWriter", "StreamLogHandler"),
        "streaming_mw.storage",
    ),
    **dict.fromkeys(
        (
            "ActiveStream",
            "StreamRegistry",
            "StreamingContainer",
            "StreamingOptions",
            "get_container",
            "init_channels",
            "init_event_storage",
            "init_lease_limiter",
        ),
        "streaming_mw.runtime",
    ),
    "stream_limit_exceeded_handler": "streaming_mw.web",
}
"""Names this module exported before the layered layout, and where they live now. They keep
working, with a `DeprecationWarning`, until 0.2."""


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"streaming_mw.{name} moved: import it from {module} "
        "(the top-level name is removed in 0.2)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(import_module(module), name)
