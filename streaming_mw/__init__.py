"""streaming_mw: real-time event delivery for FastAPI.

An ASGI middleware plus a dependency-injection extension: SSE framing, per-user stream leases,
Redis fan-out with an in-memory fallback, lossless resume and OpenTelemetry spans.
"""

from __future__ import annotations

from .channels import AsyncStreamChannel, Follower, StreamMeta, StreamState
from .channels.redis import SyncRedisChannel
from .channels.sync import SyncStreamChannel
from .config import (
    ChannelConfig,
    QueueRedisConfig,
    StorageConfig,
    StreamingSettings,
    StreamLeaseConfig,
    load_settings,
)
from .container import (
    StreamingContainer,
    StreamingOptions,
    get_container,
    init_channels,
    init_event_storage,
    init_lease_limiter,
    init_streaming,
    init_telemetry,
)
from .dependencies import (
    add_exception_handlers,
    get_emitter,
    lease_dependency,
    stream_limit_exceeded_handler,
    streaming_identity,
)
from .emitters import DeploymentEmitter, SSEEmitter, StreamContext
from .endpoints import sse_response, stream_response
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    EventTooLargeError,
    InvalidCursorError,
    InvalidEventError,
    InvalidFieldError,
    InvalidStreamIdError,
    InvalidUserIdError,
    LeaseError,
    LeaseLost,
    SlowConsumerError,
    StreamClosedError,
    StreamingError,
    StreamLimitExceeded,
    StreamNotFoundError,
)
from .events import TERMINAL_EVENT_TYPES, Cursor, EventType, StreamEvent
from .jobs import JobHandle, JobState, JobStatus, QueueConfig
from .jobs.client import cancel, enqueue, init_jobs, job_status
from .jobs.worker import QueueWorker
from .leases import Lease, LeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter
from .lifecycle import stream_lease
from .middleware import StreamingMiddleware
from .registry import ActiveStream, StreamRegistry
from .responses import EventStreamResponse
from .sse import (
    PING,
    SSE_HEADERS,
    SSEComment,
    SSEEvent,
    SSEParser,
    encode,
    encode_item,
    encode_stream_event,
    sse_headers,
)
from .storage import EventStorage, MemoryEventStorage, StorageWriter, StreamLogHandler

__version__ = "0.1.0.dev0"

__all__ = [
    "PING",
    "SSE_HEADERS",
    "TERMINAL_EVENT_TYPES",
    "ActiveStream",
    "AsyncStreamChannel",
    "BackendUnavailableError",
    "ChannelConfig",
    "ConfigurationError",
    "Cursor",
    "DeploymentEmitter",
    "EventStorage",
    "EventStreamResponse",
    "EventTooLargeError",
    "EventType",
    "Follower",
    "InvalidCursorError",
    "InvalidEventError",
    "InvalidFieldError",
    "InvalidStreamIdError",
    "InvalidUserIdError",
    "JobHandle",
    "JobState",
    "JobStatus",
    "Lease",
    "LeaseError",
    "LeaseLimiter",
    "LeaseLost",
    "MemoryEventStorage",
    "MemoryLeaseLimiter",
    "QueueConfig",
    "QueueRedisConfig",
    "QueueWorker",
    "RedisLeaseLimiter",
    "SSEComment",
    "SSEEmitter",
    "SSEEvent",
    "SSEParser",
    "SlowConsumerError",
    "StorageConfig",
    "StorageWriter",
    "StreamClosedError",
    "StreamContext",
    "StreamEvent",
    "StreamLeaseConfig",
    "StreamLimitExceeded",
    "StreamLogHandler",
    "StreamMeta",
    "StreamNotFoundError",
    "StreamRegistry",
    "StreamState",
    "StreamingContainer",
    "StreamingError",
    "StreamingMiddleware",
    "StreamingOptions",
    "StreamingSettings",
    "SyncRedisChannel",
    "SyncStreamChannel",
    "add_exception_handlers",
    "cancel",
    "encode",
    "encode_item",
    "encode_stream_event",
    "enqueue",
    "get_container",
    "get_emitter",
    "init_channels",
    "init_event_storage",
    "init_jobs",
    "init_lease_limiter",
    "init_streaming",
    "init_telemetry",
    "job_status",
    "lease_dependency",
    "load_settings",
    "sse_headers",
    "sse_response",
    "stream_lease",
    "stream_limit_exceeded_handler",
    "stream_response",
    "streaming_identity",
]
